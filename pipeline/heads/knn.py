"""k nearest neighbours on the training features: the simplest estimate of what the features hold."""

from __future__ import annotations

import numpy as np

from pipeline.config import KnnParams
from pipeline.heads.base import PooledHead


class KnnHead(PooledHead):
    """k nearest neighbours by cosine similarity on L2-normalised features, weighted votes.

    Stores the training features (float16) in the head file.
    """

    kind = "knn"
    Params = KnnParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.bank, self.bank_labels = X.astype(np.float16), y.astype(np.int64)

    def _scores(self, X: np.ndarray) -> np.ndarray:
        k = min(self.params.k, len(self.bank_labels))
        bank = self.bank.astype(np.float32)
        scores = np.zeros((len(X), self.n_classes), np.float32)
        for start in range(0, len(X), 1024):
            sims = X[start : start + 1024] @ bank.T
            nearest = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
            near_sims = np.take_along_axis(sims, nearest, axis=1)
            # shifting each row by its maximum keeps exp finite and leaves the vote shares unchanged
            weights = np.exp((near_sims - near_sims.max(axis=1, keepdims=True)) / self.params.temperature)
            rows = np.repeat(np.arange(len(nearest)), k)
            np.add.at(scores[start : start + 1024], (rows, self.bank_labels[nearest].ravel()), weights.ravel())
        return np.log(scores + 1e-30)  # log of the vote mass: softmax gives the vote shares

    def _model_arrays(self) -> dict[str, np.ndarray]:
        return {"bank": self.bank, "bank_labels": self.bank_labels}

    def _load_model_arrays(self, state: dict[str, np.ndarray]) -> None:
        self.bank, self.bank_labels = state["bank"], state["bank_labels"]
