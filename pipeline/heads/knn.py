"""k nearest neighbours on the training features: the simplest estimate of what the features hold."""

from __future__ import annotations

import numpy as np

from pipeline.config import KnnParams
from pipeline.heads.base import EpochLog, PooledHead
from pipeline.neighbours import top_k_cosine


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
        found = top_k_cosine(X, self.bank, k, normalize=False, block_rows=1024)
        # shifting each row by its maximum keeps exp finite and leaves the vote shares unchanged
        weights = np.exp((found.similarity - found.similarity[:, :1]) / self.params.temperature)
        scores = np.zeros((len(X), self.n_classes), np.float32)
        rows = np.repeat(np.arange(len(X)), k)
        np.add.at(scores, (rows, self.bank_labels[found.index].ravel()), weights.ravel())
        return np.log(scores + 1e-30)  # log of the vote mass: softmax gives the vote shares

    def penalty(self, n_rows: int) -> dict[str, int]:
        return {"neighbours": min(self.params.k, n_rows)}

    def _model_arrays(self) -> dict[str, np.ndarray]:
        return {"bank": self.bank, "bank_labels": self.bank_labels}

    def _load_model_arrays(self, state: dict[str, np.ndarray]) -> None:
        self.bank, self.bank_labels = state["bank"], state["bank_labels"]
