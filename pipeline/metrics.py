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
    # a class absent from the split has no accuracy: null in JSON
    out["per_class_accuracy"] = {c: None if np.isnan(a) else round(float(a), 6) for c, a in zip(classes, per_class)}
    out["confusion_matrix"] = cm.tolist()
    return out


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    plt = _pyplot()
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
    _save(fig, path)


def calibration(proba: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Expected calibration error of the top-1 confidence, with the per-bin statistics.

    ECE = sum over equal-width confidence bins of (bin share) * |accuracy - mean confidence|.
    """
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    acc = np.bincount(which, weights=correct, minlength=n_bins) / np.maximum(count, 1)
    conf = np.bincount(which, weights=confidence, minlength=n_bins) / np.maximum(count, 1)
    ece = float(np.sum(count / max(len(labels), 1) * np.abs(acc - conf)))
    return {"ece": ece, "edges": edges.tolist(), "count": count.tolist(), "accuracy": acc.tolist(), "confidence": conf.tolist()}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)


def plot_reliability(stats: dict, path: str | Path, title: str) -> None:
    plt = _pyplot()
    edges = np.array(stats["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    count = np.array(stats["count"])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(centres[count > 0], np.array(stats["accuracy"])[count > 0], width=width * 0.95, color="tab:blue",
           edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}\nECE {stats['ece']:.4f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def comparison_table(rows: list[dict]) -> str:
    """Markdown table of heads: name, kind, test top-1 / top-5 / mean per-class, ECE, fit time, choice."""
    lines = [
        "| head | kind | test top-1 | test top-5 | mean per-class | val top-1 | ECE | fit s | chosen |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        test, chosen = r["test"], dict(r.get("chosen", {}))
        # a swept head is refit on train + val: its held-out val figure is the one from the sweep
        val_top1 = chosen.pop("chosen_val_top1", r.get("val", {}).get("top1", float("nan")))
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())
        cells = [r["name"], r["head"], f"{test['top1']:.4f}", f"{test.get('top5', float('nan')):.4f}",
                 f"{test['mean_class_accuracy']:.4f}", f"{val_top1:.4f}",
                 f"{test.get('ece', float('nan')):.4f}", f"{r.get('fit_seconds', float('nan')):.1f}", chosen]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nval top-1 of a swept head is its held-out accuracy at the chosen penalty (the head is then refit on "
            "train + val). ECE: expected calibration error of the softmax of the head's scores (15 bins).\n")
    return "\n".join(lines) + "\n" + note


def plot_comparison(rows: list[dict], path: str | Path) -> None:
    plt = _pyplot()
    names = [r["name"] for r in rows]
    top1 = [r["test"]["top1"] for r in rows]
    per_class = [r["test"]["mean_class_accuracy"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.5 * len(rows)))
    ax.barh(y - 0.2, top1, height=0.4, label="test top-1")
    ax.barh(y + 0.2, per_class, height=0.4, label="test mean per-class")
    for yi, v in zip(y, top1):
        ax.text(v + 0.005, yi - 0.2, f"{v:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("heads on the same cached features")
    fig.tight_layout()
    _save(fig, path)
