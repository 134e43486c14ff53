"""The registry and its metrics: validation, hand-computed values, scikit-learn, NumPy vs Dask."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
from sklearn import metrics as skm

from scibench_data.registry import (
    REGISTRY,
    Benchmark,
    Metric,
    PredictionFormat,
    Reference,
    get,
)
from scibench_data.scoring.predictions import compute_scores


def test_registry_declares_the_four_benchmarks_with_resolvable_metrics():
    assert set(REGISTRY) == {"cloudmask", "stemdl", "stemdl_reconstruction", "candle_uno"}
    for b in REGISTRY.values():
        assert b.primary in {m.name for m in b.metrics}
        for m in b.metrics:
            assert callable(m.resolve()), m.fn
    assert get("cloudmask").target == 0.9 and get("cloudmask").metric("log_loss").direction == "lower"
    assert get("candle_uno").primary == "r2" and get("stemdl_reconstruction").target is None


def test_unknown_names_and_bad_declarations_raise():
    with pytest.raises(KeyError, match="unknown benchmark 'nope'; registered: cloudmask"):
        get("nope")
    with pytest.raises(ValueError, match="direction must be one of"):
        Metric("acc", "up", "m:f")
    with pytest.raises(ValueError, match="fn must be 'package.module:function'"):
        Metric("acc", "higher", "module.function")
    with pytest.raises(ImportError, match="metric acc: cannot import scibench_data.scoring.segmentation:nope"):
        Metric("acc", "higher", "scibench_data.scoring.segmentation:nope").resolve()
    fmt = PredictionFormat("p", ("n",), ("id",), "f", "")
    with pytest.raises(ValueError, match="primary metric 'f1' not among"):
        Benchmark("b", "t", "e", ("test",), "test", (Metric("acc", "higher", "m:f"),), "f1", None, "whole_set", fmt,
                  Reference("m"))
    with pytest.raises(ValueError, match="test split 'test' not in"):
        Benchmark("b", "t", "e", ("train",), "test", (Metric("acc", "higher", "m:f"),), "acc", None, "whole_set", fmt,
                  Reference("m"))
    with pytest.raises(ValueError, match="cannot also be an id"):
        PredictionFormat("p", ("n",), ("p",), "f", "")


def test_metric_direction_decides_better():
    acc, loss = get("cloudmask").metric("pixel_accuracy"), get("cloudmask").metric("log_loss")
    assert acc.better(0.9, 0.8) and not acc.better(0.8, 0.9)
    assert loss.better(0.1, 0.2) and not loss.better(float("nan"), 0.2) and loss.better(0.3, float("nan"))
    assert get("cloudmask").meets_target(0.91) and not get("cloudmask").meets_target(0.89)
    assert get("stemdl_reconstruction").meets_target(0.5) is None


def test_cloudmask_metrics_hand_computed():
    """One 2x4 scene, one unlabelled pixel: tp=2, fp=1, fn=1, tn=3."""
    prob = np.array([[0.9, 0.8, 0.7, 0.2], [0.1, 0.6, 0.3, 0.4]], dtype=np.float32)
    truth = np.array([[1, 1, 0, 0], [0, np.nan, 1, 0]], dtype=np.float32)
    # predictions >= 0.5: [[1,1,1,0],[0,(1),0,0]]; labelled 7 pixels
    b = get("cloudmask")
    s = compute_scores(b, prob[None], truth[None])
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert s["iou"] == pytest.approx(2 / 4)
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.4])
    t = np.array([1, 1, 0, 0, 0, 1, 0])
    expected_ll = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    assert s["log_loss"] == pytest.approx(expected_ll, rel=1e-6)


def _scenes(seed: int = 0, n: int = 3, shape: tuple[int, int] = (16, 24)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, *shape)) < 0.4).astype(np.float32)
    prob = np.clip(truth * 0.6 + rng.random(truth.shape) * 0.5, 0, 1).astype(np.float32)
    truth[:, 0, :3] = np.nan
    return prob, truth


def test_cloudmask_metrics_match_scikit_learn_per_scene_mean():
    prob, truth = _scenes()
    expected = {k: [] for k in ("pixel_accuracy", "f1", "iou", "log_loss")}
    for p, t in zip(prob, truth):
        ok = ~np.isnan(t)
        y, q = t[ok].astype(int), p[ok].astype(np.float64)
        expected["pixel_accuracy"].append(skm.accuracy_score(y, q >= 0.5))
        expected["f1"].append(skm.f1_score(y, q >= 0.5))
        expected["iou"].append(skm.jaccard_score(y, q >= 0.5))
        expected["log_loss"].append(skm.log_loss(y, np.clip(q, 1e-7, 1 - 1e-7), labels=[0, 1]))
    got = compute_scores(get("cloudmask"), prob, truth)
    for k, v in expected.items():
        assert got[k] == pytest.approx(float(np.mean(v)), rel=1e-5), k


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_benchmark_scores_the_same_in_memory_and_on_dask(name):
    rng = np.random.default_rng(3)
    b = get(name)
    if name == "cloudmask":
        pred, truth = _scenes(1)
        chunks = (1, 16, 24)
    elif name == "stemdl":
        truth = rng.integers(1, 12, 40)
        pred = rng.normal(size=(40, 12))
        pred[np.arange(40), truth] += rng.random(40) * 3
        chunks = (7, 12)
    elif name == "stemdl_reconstruction":
        truth = rng.random((5, 16, 16))
        pred = truth + rng.normal(0, 0.1, truth.shape)
        chunks = (2, 16, 16)
    else:
        truth = rng.random(200)
        pred = truth + rng.normal(0, 0.2, 200)
        chunks = (64,)
    mem = compute_scores(b, pred, truth)
    lazy = compute_scores(b, da.from_array(pred, chunks=chunks), da.from_array(truth, chunks=chunks[:truth.ndim]))
    assert set(mem) == {m.name for m in b.metrics}
    for k in mem:
        assert lazy[k] == pytest.approx(mem[k], rel=1e-12, abs=1e-12), (name, k)


def test_stemdl_metrics_match_scikit_learn():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, 60)
    scores = rng.normal(size=(60, 10))
    scores[np.arange(60), labels] += rng.random(60) * 2.5
    got = compute_scores(get("stemdl"), scores, labels)
    assert got["top1"] == pytest.approx(skm.accuracy_score(labels, scores.argmax(1)))
    assert got["top5"] == pytest.approx(skm.top_k_accuracy_score(labels, scores, k=5, labels=np.arange(10)))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(labels, scores.argmax(1), average="macro"))


def test_uno_metrics_match_scikit_learn_and_take_truth_first():
    rng = np.random.default_rng(6)
    y = rng.random(100)
    p = 0.5 * y + rng.normal(0, 0.1, 100)
    got = compute_scores(get("candle_uno"), p, y)  # (prediction, truth), as every benchmark
    assert got["r2"] == pytest.approx(skm.r2_score(y, p))  # r2 is not symmetric: checks the argument order
    assert got["r2"] != pytest.approx(skm.r2_score(p, y))
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, p))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert got["pearson"] == pytest.approx(np.corrcoef(y, p)[0, 1])


def test_reconstruction_metrics_hand_computed():
    target = np.zeros((2, 12, 12))
    target[:, 3:9, 3:9] = 1.0
    pred = target + 0.1
    got = compute_scores(get("stemdl_reconstruction"), pred, target)
    assert got["mse"] == pytest.approx(0.01)
    assert got["psnr"] == pytest.approx(10 * math.log10(1.0 / 0.01))
    assert compute_scores(get("stemdl_reconstruction"), target, target)["ssim"] == pytest.approx(1.0)
    assert got["ssim"] < 1.0
