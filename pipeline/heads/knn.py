"""k nearest neighbours on the training features: the simplest estimate of what the features hold."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.head_params import KnnParams
from pipeline.heads.base import EpochLog, FeatureNormalizer, PooledHead
from pipeline.heads.neighbours import Neighbours, top_k_cosine
from pipeline.heads.shots import ShotFit

if TYPE_CHECKING:
    from pipeline.core.config import CurvesParams
    from pipeline.heads.shots import ShotSet, TestSplit

BLOCK_ROWS = 1024
"""Query rows per block of the search."""


def votes(found: Neighbours, labels: np.ndarray, n_classes: int, temperature: float) -> np.ndarray:
    """Class scores from the neighbours ``found`` (base rows of ``labels``): the log of each class's vote
    mass, each neighbour voting exp(similarity / temperature); softmax gives the vote shares."""
    # shifting each row by its maximum keeps exp finite and leaves the vote shares unchanged
    weights = np.exp((found.similarity - found.similarity[:, :1]) / temperature)
    scores = np.zeros((len(found.index), n_classes), np.float32)
    rows = np.repeat(np.arange(len(found.index)), found.index.shape[1])
    np.add.at(scores, (rows, labels[found.index].ravel()), weights.ravel())
    return np.log(scores + 1e-30)


class KnnHead(PooledHead):
    """k nearest neighbours by cosine similarity on L2-normalised features, weighted votes.

    Stores the training features (float16) in the head file.
    """

    kind = "knn"
    Params = KnnParams

    def _fit(self, X: np.ndarray, y: np.ndarray, log: EpochLog | None = None) -> None:
        self.bank, self.bank_labels = X.astype(np.float16), y.astype(np.int64)

    def _scores(self, X: np.ndarray) -> np.ndarray:
        k = min(self.params.k, len(self.bank_labels))
        # X and the bank are already normalised as params.normalize says: an inner-product search
        found = top_k_cosine(X, self.bank, k, normalize=False, block_rows=BLOCK_ROWS)
        return votes(found, self.bank_labels, self.n_classes, self.params.temperature)

    @classmethod
    def curve_fits(cls, params: KnnParams, seed: int, train: tuple[np.ndarray, np.ndarray], n_classes: int,
                   sets: list[ShotSet], test: TestSplit, curves: CurvesParams) -> list[ShotFit]:
        """Every set's neighbours from one search: with a per-row normalisation (l2, none) the bank of a set
        is the rows of the whole training split's bank, so ``top_k_cosine`` computes each block of
        similarities once and takes each set's nearest rows from it (``subsets``)."""
        if params.normalize == "standardize":  # the normalisation depends on the set
            return super().curve_fits(params, seed, train, n_classes, sets, test, curves)
        X, y = train
        norm = FeatureNormalizer(params.normalize)
        bank = norm.transform(X).astype(np.float16)  # as the head stores it
        queries = test.normalised(params.normalize, norm.transform)
        found = top_k_cosine(queries, bank, params.k, normalize=False, subsets=[s.rows for s in sets])
        fits = []
        for s, near in zip(sets, found):
            k = min(params.k, len(s.rows))
            near = Neighbours(near.index[:, :k], near.similarity[:, :k])
            fits.append(ShotFit(test.accuracy(votes(near, y, n_classes, params.temperature)), neighbours=k))
        return fits

    def penalty(self, n_rows: int) -> dict[str, int]:
        return {"neighbours": min(self.params.k, n_rows)}

    def _model_arrays(self) -> dict[str, np.ndarray]:
        return {"bank": self.bank, "bank_labels": self.bank_labels}

    def _load_model_arrays(self, state: dict[str, np.ndarray]) -> None:
        self.bank, self.bank_labels = state["bank"], state["bank_labels"]
