"""Classification metrics from class scores, and the plots written by the evaluate stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.fileutil import atomic_path


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    return np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def classification_metrics(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """top-1, top-5 (when there are more than 5 classes), mean per-class and per-class accuracy."""
    n_classes = len(classes)
    predicted = scores.argmax(axis=1)
    cm = confusion_matrix(labels, predicted, n_classes)
    support = cm.sum(axis=1)
    per_class = np.divide(np.diag(cm), support, out=np.full(n_classes, np.nan), where=support > 0)
    out = {"n": int(len(labels)), "top1": float((predicted == labels).mean())}
    if n_classes > 5:
        out["top5"] = top_k_accuracy(scores, labels, 5)
    out["mean_class_accuracy"] = float(np.nanmean(per_class))
    out["per_class_accuracy"] = {c: round(float(a), 6) for c, a in zip(classes, per_class)}
    out["confusion_matrix"] = cm.tolist()
    return out


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = max(5.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
