"""What a user sees of a run besides the progress bar: metrics, TensorBoard events, a PNG of
the training curves. Nothing here talks to TensorFlow's distribution machinery."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["auc", "classification_metrics", "plot_curves"]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U, ties at their average rank); NaN when one class is missing."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(np.asarray(scores)[order], return_index=True, return_counts=True)
    ranks = np.empty(len(order))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Log loss, AUC and accuracy (threshold 0.5) of logits against 0/1 labels."""
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    loss = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
    return {"loss": float(loss), "auc": auc(labels, logits), "accuracy": float(np.mean((logits > 0) == (labels > 0.5))),
            "rows": float(len(labels))}


def plot_curves(history: Sequence[dict[str, Any]], evaluations: Sequence[dict[str, Any]], path: str,
                title: str) -> str:
    """Training loss, throughput and input stall per logged step, eval AUC and loss per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [h["step"] for h in history]
    axes[0].plot(steps, [h["loss"] for h in history], label="train loss")
    if evaluations:
        axes[0].plot([e["step"] for e in evaluations], [e["loss"] for e in evaluations], "o-", label="eval loss")
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[1].plot([e["step"] for e in evaluations], [e["auc"] for e in evaluations], "o-", color="tab:green")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("eval AUC")
    axes[2].plot(steps, [h["examples_per_s"] for h in history], color="tab:orange", label="examples/s")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("examples/s")
    stall = axes[2].twinx()
    stall.plot(steps, [100 * h["input_stall"] for h in history], color="tab:red", alpha=0.5)
    stall.set_ylabel("input stall %")
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
