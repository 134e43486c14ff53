"""Pictures of benchmark samples and predictions (PNG, matplotlib Agg backend).

- CloudMask: a scene's false-colour reflectance (S3, S2, S1 as R, G, B), brightness
  temperature (S8, 10.8 um), the label and, when a prediction file is given, the predicted
  cloud probability.
- STEMDL: a sample's three CBED projections (and its projected potential when the store has
  one), with the predicted class or potential when given.
- CANDLE-UNO: predicted vs true AUC of a prediction file on the test split.

Data comes through the catalog (``root`` is the catalog-level parameter); predictions are
files in the benchmark's prediction format (:mod:`scibench_data.scoring.predictions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scibench_data.registry import get
from scibench_data.scoring.predictions import (
    PredictionError,
    align,
    load_truth,
    open_entry,
    read_predictions,
)
from scibench_data.scoring.regression import r2


def _pyplot():
    # matplotlib costs seconds to import; only a picture needs it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def stretch(x: np.ndarray, lo: float = 2, hi: float = 98) -> np.ndarray:
    """Percentile stretch to [0, 1], NaN -> 0 (pure)."""
    x = np.asarray(x, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros_like(x)
    a, b = np.percentile(finite, [lo, hi])
    out = (x - a) / (b - a) if b > a else np.zeros_like(x)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def _check_index(n: int, total: int, what: str) -> int:
    if not 0 <= n < total:
        raise ValueError(f"{what} {n} out of range 0..{total - 1}")
    return n


def _prediction_for(path: str | Path, benchmark: str, ids: dict[str, str]) -> np.ndarray:
    """The prediction of the sample with ``ids`` in a prediction file."""
    b = get(benchmark)
    pred = read_predictions(path, b)
    hit = np.ones(len(pred[b.prediction.ids[0]]), dtype=bool)
    for k, v in ids.items():
        hit &= np.asarray([str(x) for x in pred[k]]) == str(v)
    where = np.flatnonzero(hit)
    if where.size != 1:
        raise PredictionError(f"{path}: {'no' if where.size == 0 else 'several'} prediction(s) for sample {ids}")
    return np.asarray(pred[b.prediction.variable][int(where[0])])


def show_cloudmask(scene: int, out: str | Path, root: str | None = None, prediction: str | Path | None = None) -> Path:
    """PNG of scene ``scene`` (index along the store's scene dimension)."""
    return _save(cloudmask_figure(scene, root, prediction), out)


#: The label's two classes: (value, name, colour); unlabelled pixels stay blank.
LABEL_CLASSES = ((0, "clear", "#2b6cb0"), (1, "cloud", "#f7fafc"))


def cloudmask_figure(scene: int, root: str | None = None, prediction: str | Path | None = None) -> Any:
    """The figure of :func:`show_cloudmask`: continuous panels get a colour bar, the binary label two
    named colours and a legend."""
    # matplotlib: imported when a picture is drawn (see _pyplot)
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    b = get("cloudmask")
    ds = open_entry(b, root)
    _check_index(scene, ds.sizes["scene"], "scene")
    channels = [str(c) for c in ds["channel"].values]
    image = ds["image"][scene].values
    label = ds["cloud_mask"][scene].values.astype(np.float32)
    label[label > 1] = np.nan
    name = str(ds["source_name"].values[scene])
    rgb = np.stack([stretch(image[channels.index(c)]) for c in ("S3", "S2", "S1")], axis=-1)
    bt = image[channels.index("S8")]
    panels: list[tuple[str, np.ndarray, dict[str, Any]]] = [("false colour (S3, S2, S1)", rgb, {}), ("brightness temperature S8 (K)", bt, {"cmap": "inferno"}),
              ("label: Bayesian cloud mask", label, {"cmap": ListedColormap([c for _, _, c in LABEL_CLASSES]),
                                                     "vmin": -0.5, "vmax": 1.5, "interpolation": "nearest"})]
    if prediction is not None:
        prob = _prediction_for(prediction, "cloudmask", {"source_name": name})
        if prob.shape != label.shape:
            raise PredictionError(f"{prediction}: scene {name} has shape {prob.shape}, the store's is {label.shape}")
        panels.append(("predicted cloud probability", prob, {"cmap": "Blues", "vmin": 0, "vmax": 1}))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), dpi=100)
    for ax, (title, data, kw) in zip(axes, panels):
        im = ax.imshow(data, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        if title.startswith("label"):
            ax.legend(handles=[Patch(facecolor=c, edgecolor="grey", label=n) for _, n, c in LABEL_CLASSES],
                      loc="lower right", fontsize=7, framealpha=0.8)
        elif data.ndim == 2:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"CloudMask scene {scene} ({ds['split'].values[scene]!s}): {name[:40]}", fontsize=9)
    fig.tight_layout()
    return fig


def show_stemdl(sample: int, out: str | Path, root: str | None = None, prediction: str | Path | None = None,
                task: str = "classification") -> Path:
    """PNG of sample ``sample``'s CBED stack (and potential); the prediction's top-5 classes
    (classification) or predicted potential (reconstruction) when given."""
    if task not in ("classification", "reconstruction"):
        raise ValueError(f"task must be 'classification' or 'reconstruction', got {task!r}")
    bname = "stemdl" if task == "classification" else "stemdl_reconstruction"
    ds = open_entry(get(bname), root)
    _check_index(sample, ds.sizes["sample"], "sample")
    cbed = ds["cbed"][sample].values
    label = int(ds["label"].values[sample])
    ids = {k: str(ds[k].values[sample]) for k in ("source_file", "source_key")}
    panels = [(f"projection {i}", cbed[i], {"cmap": "magma"}) for i in range(cbed.shape[0])]
    if task == "reconstruction":
        if "potential" not in ds:
            raise ValueError(f"the {bname} store has no 'potential' variable (the reconstruction target): "
                             "convert raw files that carry one, without --preprocess")
        panels.append(("target: projected potential", ds["potential"][sample].values, {"cmap": "viridis"}))
        title = f"STEMDL reconstruction, sample {sample} ({ids['source_key']}, split {ds['split'].values[sample]})"
    else:
        title = (f"STEMDL classification, sample {sample} ({ids['source_key']}, split {ds['split'].values[sample]}): "
                 f"space group {label}")
    if prediction is not None:
        pred = _prediction_for(prediction, bname, ids)
        if task == "classification":
            top = np.argsort(pred)[::-1][:5]
            title += f"; predicted top-5 {', '.join(str(int(c)) for c in top)}"
        else:
            panels.append(("predicted potential", pred, {"cmap": "viridis"}))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=100)
    for ax, (t, data, kw) in zip(np.atleast_1d(axes), panels):
        ax.imshow(data, **kw)
        ax.set_title(t, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def show_uno(prediction: str | Path, out: str | Path, root: str | None = None) -> Path:
    """PNG scatter of predicted vs true AUC over the test split, with R2 and the identity line."""
    b = get("candle_uno")
    truth = load_truth(b, open_entry(b, root))
    pred = read_predictions(prediction, b)
    order = align({k: pred[k] for k in b.prediction.ids}, truth.ids, prediction, b.prediction.dims[0])
    y = np.asarray(truth.values.compute() if hasattr(truth.values, "compute") else truth.values, dtype=np.float64)
    p = np.asarray(pred[b.prediction.variable], dtype=np.float64)[order]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(y, p, s=6, alpha=0.5, color="tab:blue", edgecolors="none")
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="tab:red", linewidth=1, label="y = x")
    ax.set_xlabel("true AUC")
    ax.set_ylabel("predicted AUC")
    ax.set_title(f"CANDLE-UNO test split: {len(y)} responses, R2 {r2(y, p):.3f}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)
