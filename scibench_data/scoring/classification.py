"""Classification metrics: top-1, top-5 and macro F1 (pure; NumPy or Dask arrays alike).

Every function is written with array operations that NumPy and Dask both
implement (broadcasting, reductions, ``bincount``), so the same call scores an
in-memory array or a lazy Dask array and returns the same Python float.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or dask.array.Array


def _check(scores: Array, labels: Array) -> None:
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be (N, C) and labels (N,), got {scores.shape} and {labels.shape}")


def top_k_accuracy(scores: Array, labels: Array, k: int = 1) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores
    (ties count in the sample's favour: rank = number of strictly higher scores)."""
    _check(scores, labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    classes = np.arange(scores.shape[1])
    true_score = (scores * (labels[:, None] == classes[None, :])).sum(axis=1)
    rank = (scores > true_score[:, None]).sum(axis=1)
    return float((rank < k).mean())


def confusion_matrix(labels: Array, predictions: Array, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts, rows true class, columns predicted (computed to NumPy)."""
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(f"labels and predictions must be (N,), got {labels.shape} and {predictions.shape}")
    flat = np.bincount(labels.astype(np.int64) * n_classes + predictions.astype(np.int64), minlength=n_classes**2)
    return np.asarray(flat).reshape(n_classes, n_classes)


def f1_per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 = 2 TP / (2 TP + FP + FN) and the mask of classes seen in labels or predictions."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2 * tp / (2 * tp + fp + fn), 0.0)
    return f1, present


def macro_f1(labels: Array, predictions: Array, n_classes: int) -> float:
    """Unweighted mean F1 over the classes present in labels or predictions (scikit-learn's
    ``f1_score(average="macro")``)."""
    f1, present = f1_per_class(confusion_matrix(labels, predictions, n_classes))
    return float(f1[present].mean()) if present.any() else 0.0


def classification_scores(scores: Array, labels: Array) -> dict[str, float]:
    """Top-1, top-5 and macro F1 of ``(N, C)`` scores (logits or probabilities) against labels."""
    _check(scores, labels)
    predictions = scores.argmax(axis=1)
    return {"top1": top_k_accuracy(scores, labels, 1), "top5": top_k_accuracy(scores, labels, 5),
            "macro_f1": macro_f1(labels, predictions, scores.shape[1])}
