"""Regression metrics (MSE, MAE, R2, Pearson) as pure functions.

Written with operators that NumPy and Dask arrays share, so the same function
scores an in-memory prediction or a lazy one; a Dask result is computed once
at the end. Inputs are flattened; both must have the same number of values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS: tuple[str, ...] = ("mse", "mae", "r2", "pearson")


def _pair(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    if y_true.shape != y_pred.shape and y_true.size != y_pred.size:
        raise ValueError(f"y_true has {y_true.size} values, y_pred {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("cannot score an empty prediction")
    return y_true.reshape(-1).astype(np.float64), y_pred.reshape(-1).astype(np.float64)


def _value(x: Any) -> float:
    return float(x.compute() if hasattr(x, "compute") else x)


def mse(y_true: Any, y_pred: Any) -> float:
    """Mean squared error."""
    t, p = _pair(y_true, y_pred)
    return _value(((t - p) ** 2).mean())


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error."""
    t, p = _pair(y_true, y_pred)
    return _value(abs(t - p).mean())


def r2(y_true: Any, y_pred: Any) -> float:
    """Coefficient of determination, 1 - SS_res / SS_tot (as scikit-learn's r2_score; NaN if y_true is constant)."""
    t, p = _pair(y_true, y_pred)
    ss_res = _value(((t - p) ** 2).sum())
    ss_tot = _value(((t - t.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def pearson(y_true: Any, y_pred: Any) -> float:
    """Pearson correlation coefficient (NaN if either input is constant)."""
    t, p = _pair(y_true, y_pred)
    dt, dp = t - t.mean(), p - p.mean()
    cov, vt, vp = _value((dt * dp).sum()), _value((dt * dt).sum()), _value((dp * dp).sum())
    return cov / float(np.sqrt(vt * vp)) if vt > 0 and vp > 0 else float("nan")


def regression_scores(y_true: Any, y_pred: Any) -> dict[str, float]:
    """All four metrics, keyed by name."""
    return {"mse": mse(y_true, y_pred), "mae": mae(y_true, y_pred), "r2": r2(y_true, y_pred),
            "pearson": pearson(y_true, y_pred)}
