"""STEMDL metrics against scikit-learn, torchmetrics and hand-computed values, on NumPy and Dask."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, top_k_accuracy_score
from torchmetrics.functional.image import structural_similarity_index_measure

from scibench_data.scoring.classification import (
    classification_scores,
    confusion_matrix,
    macro_f1,
    top_k_accuracy,
)
from scibench_data.scoring.reconstruction import (
    gaussian_window,
    mse,
    psnr,
    reconstruction_scores,
    ssim,
    ssim_per_image,
)


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, 200)
    scores = rng.standard_normal((200, 15)) + 2.0 * np.eye(15)[labels] * rng.random((200, 1))
    return scores, labels


def test_top_k_matches_sklearn_on_numpy_and_dask(logits):
    scores, labels = logits
    for k in (1, 5):
        expected = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(15))
        assert top_k_accuracy(scores, labels, k) == pytest.approx(expected)
        lazy = top_k_accuracy(da.from_array(scores, chunks=(37, 15)), da.from_array(labels, chunks=37), k)
        assert lazy == pytest.approx(expected)
    assert top_k_accuracy(scores, labels, 1) == pytest.approx((scores.argmax(1) == labels).mean())


def test_macro_f1_matches_sklearn_on_numpy_and_dask(logits):
    scores, labels = logits
    pred = scores.argmax(1)
    expected = f1_score(labels, pred, average="macro")
    assert macro_f1(labels, pred, 15) == pytest.approx(expected)
    assert macro_f1(da.from_array(labels, chunks=50), da.from_array(pred, chunks=50), 15) == pytest.approx(expected)
    both = classification_scores(scores, labels)
    assert both == pytest.approx(classification_scores(da.from_array(scores, chunks=(64, 15)), da.from_array(labels, chunks=64)))


def test_classification_hand_computed():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 2, 2])  # predictions 1, 0, 2, 0
    assert top_k_accuracy(scores, labels, 1) == 0.5
    assert top_k_accuracy(scores, labels, 2) == 0.75  # sample 3: label 2 is ranked last
    cm = confusion_matrix(labels, scores.argmax(1), 3)
    assert cm.tolist() == [[0, 0, 0], [1, 1, 0], [1, 0, 1]]
    # F1: class 0: 0 (tp 0, fp 2); class 1: 2/3; class 2: 2/3 -> mean 4/9
    assert macro_f1(labels, scores.argmax(1), 3) == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match=r"scores must be \(N, C\)"):
        top_k_accuracy(scores, labels[:3], 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_accuracy(scores, labels, 0)


def test_mse_and_psnr_hand_computed():
    target = np.array([[0.0, 1.0], [2.0, 4.0]])
    pred = target + np.array([[1.0, -1.0], [0.0, 2.0]])
    assert mse(pred, target) == pytest.approx(1.5)
    assert psnr(pred, target) == pytest.approx(10 * math.log10(16 / 1.5))  # data range 4
    assert psnr(pred, target, data_range=2.0) == pytest.approx(10 * math.log10(4 / 1.5))
    assert psnr(target, target) == math.inf
    lazy = da.from_array(pred, chunks=1), da.from_array(target, chunks=1)
    assert mse(*lazy) == pytest.approx(1.5) and psnr(*lazy) == pytest.approx(psnr(pred, target))
    with pytest.raises(ValueError, match="shape"):
        mse(pred, target[:1])


def _ssim_brute_force(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """SSIM by its definition: an explicit 11x11 Gaussian window at every valid position."""
    g = gaussian_window()
    w = np.outer(g, g)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_its_definition_torchmetrics_and_dask():
    rng = np.random.default_rng(3)
    target = rng.random((4, 1, 24, 28))
    pred = np.clip(target + 0.2 * rng.standard_normal(target.shape), 0, 1)
    per = ssim_per_image(pred[:, 0], target[:, 0], 1.0)
    for n in range(4):
        assert per[n] == pytest.approx(_ssim_brute_force(pred[n, 0], target[n, 0], 1.0), rel=1e-9)
    value = ssim(pred, target, 1.0)
    assert value == pytest.approx(per.mean())
    reference = float(structural_similarity_index_measure(torch.tensor(pred), torch.tensor(target), data_range=1.0))
    assert value == pytest.approx(reference, abs=5e-3)  # its border handling differs slightly
    lazy = ssim(da.from_array(pred, chunks=(3, 1, 12, 14)), da.from_array(target, chunks=(2, 1, 24, 28)), 1.0)
    assert lazy == pytest.approx(value, rel=1e-12)
    assert ssim(target, target, 1.0) == pytest.approx(1.0)
    assert reconstruction_scores(pred, target)["ssim"] == pytest.approx(ssim(pred, target))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(pred[..., :8, :8], target[..., :8, :8], 1.0)
