"""Per-pixel binary segmentation metrics (CloudMask), on NumPy or Dask arrays.

Each metric takes predicted probabilities and 0/1 truth of one scene; pixels
where the truth is NaN (unlabelled) are left out. Scene scores are averaged
over scenes, as sciml-bench does. The functions only use array operators, so
Dask arrays give the same result lazily (``float()`` computes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

EPS = 1e-7


def _valid(truth):
    return truth == truth  # not NaN, for NumPy and Dask alike


def confusion(prob, truth, threshold: float = 0.5) -> tuple[float, float, float, float]:
    """(tp, fp, fn, tn) pixel counts."""
    valid = _valid(truth)
    pred = (prob >= threshold) & valid
    true = (truth > 0.5) & valid
    tp = (pred & true).sum()
    fp = (pred & ~true).sum()
    fn = (~pred & true & valid).sum()
    tn = (~pred & ~true & valid).sum()
    return float(tp), float(fp), float(fn), float(tn)


def pixel_accuracy(prob, truth, threshold: float = 0.5) -> float:
    tp, fp, fn, tn = confusion(prob, truth, threshold)
    total = tp + fp + fn + tn
    return (tp + tn) / total if total else float("nan")


def f1_score(prob, truth, threshold: float = 0.5) -> float:
    """F1 of the cloud class; 1.0 when a scene has no cloud and none is predicted."""
    tp, fp, fn, _ = confusion(prob, truth, threshold)
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 1.0


def iou(prob, truth, threshold: float = 0.5) -> float:
    """Intersection over union of the cloud class; 1.0 when both are empty."""
    tp, fp, fn, _ = confusion(prob, truth, threshold)
    denom = tp + fp + fn
    return tp / denom if denom else 1.0


def log_loss(prob, truth, eps: float = EPS) -> float:
    """Mean binary cross-entropy over labelled pixels, probabilities clipped to [eps, 1-eps]."""
    valid = _valid(truth)
    p = prob.clip(eps, 1 - eps) if hasattr(prob, "clip") else np.clip(prob, eps, 1 - eps)
    t = truth > 0.5
    ll = -(t * np.log(p) + (~t) * np.log(1 - p))
    n = float(valid.sum())
    return float((ll * valid).sum()) / n if n else float("nan")


def scene_scores(prob, truth, threshold: float = 0.5) -> dict[str, float]:
    return {"pixel_accuracy": pixel_accuracy(prob, truth, threshold), "f1": f1_score(prob, truth, threshold),
            "iou": iou(prob, truth, threshold), "log_loss": log_loss(prob, truth)}


def average_scores(per_scene: Iterable[Mapping[str, float]]) -> dict[str, float]:
    rows = list(per_scene)
    if not rows:
        raise ValueError("no scenes to average")
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


@dataclass(frozen=True)
class ThresholdRule:
    """``cloud = sign * (x[channel] - threshold) > 0``: the best single-channel baseline."""

    channel: int
    threshold: float
    sign: int

    def predict(self, image) -> np.ndarray:
        x = image[self.channel]
        return ((x - self.threshold) * self.sign > 0).astype(np.float32)


def fit_single_channel_threshold(images: np.ndarray, truth: np.ndarray, n_candidates: int = 200) -> tuple[ThresholdRule, float]:
    """The single channel, threshold and direction that maximise pixel accuracy on
    ``images`` ``(N, C, H, W)`` against ``truth`` ``(N, H, W)`` (NaN = unlabelled)."""
    valid = ~np.isnan(truth)
    if images.ndim != 4 or images.shape[1] == 0 or not valid.any():
        raise ValueError(f"need images (N, C, H, W) with labelled pixels, got shape {images.shape}")
    t = truth[valid] > 0.5
    best: tuple[float, ThresholdRule] | None = None
    for c in range(images.shape[1]):
        x = images[:, c][valid]
        for thr in np.quantile(x, np.linspace(0.0, 1.0, n_candidates)):
            above = x > thr
            acc_up = float(np.mean(above == t))
            for sign, acc in ((1, acc_up), (-1, 1.0 - acc_up)):
                if best is None or acc > best[0]:
                    best = (acc, ThresholdRule(c, float(thr), sign))
    if best is None:
        raise ValueError("no threshold candidate: need at least one channel")
    return best[1], best[0]
