"""CANDLE-UNO: metrics against scikit-learn/scipy (NumPy and Dask), DataLoader workers, a short training run."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch

from loaders.uno import UnoBatchSampler, UnoDataset, UnoSource, gather
from loaders.workers import worker_context
from reference_models.uno import UnoModel, UnoModelConfig, n_parameters
from scibench_data.convert.uno import UnoConversion, convert_uno
from scibench_data.pipelines.uno import UnoTrainConfig, evaluate, train
from scibench_data.scoring.regression import regression_scores
from scibench_data.synthetic.uno import SyntheticUno, generate


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("uno_train")
    cfg = SyntheticUno(n_cells=30, n_drugs=20, n_responses=1500, n_genes=40, n_descriptors=60,
                       n_fingerprint_bits=32, seed=11)
    generate(d / "raw", "raw", cfg)
    assert convert_uno(d / "raw", d / "candle_uno.zarr", UnoConversion(progress=False)).ok
    return str(d)


def test_metrics_match_sklearn_scipy_on_numpy_and_dask() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(1000)
    p = y + 0.1 * rng.standard_normal(1000)
    ref = {"mse": sklearn.metrics.mean_squared_error(y, p), "mae": sklearn.metrics.mean_absolute_error(y, p),
           "r2": sklearn.metrics.r2_score(y, p), "pearson": scipy.stats.pearsonr(y, p)[0]}
    for got in (regression_scores(y, p), regression_scores(da.from_array(y, chunks=128), da.from_array(p, chunks=100))):
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-10), k
    with pytest.raises(ValueError, match="empty"):
        regression_scores(np.array([]), np.array([]))


def test_reference_model_has_16_2m_parameters() -> None:
    assert n_parameters(UnoModel()) == pytest.approx(16.2e6, rel=0.01)
    with pytest.raises(ValueError, match="dropout"):
        UnoModelConfig(dropout=1.5)


def test_dataloader_two_workers_yields_the_joined_rows(root: str) -> None:
    ds = UnoDataset(UnoSource(root=root), "train")
    sampler = UnoBatchSampler(len(ds), 64, seed=5)
    loader = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None, num_workers=2,
                                         multiprocessing_context=worker_context())
    batches = list(loader)
    expected = [gather(ds.arrays, ds.rows()[pos]) for pos in sampler]
    assert len(batches) == len(expected) == len(sampler)
    for got, want in zip(batches, expected):
        for k in ("cell", "drug", "auc"):
            np.testing.assert_array_equal(got[k].numpy(), want[k])


def test_short_training_reaches_positive_validation_r2(root: str, tmp_path: Path) -> None:
    cfg = UnoTrainConfig(model=UnoModelConfig(tower=(64, 64, 64), dense=(64,) * 5), lr=1e-3, max_epochs=6,
                         patience=3, progress=False, seed=0)
    result = train(UnoSource(root=root), tmp_path, cfg)
    scores = evaluate(UnoSource(root=root), result.checkpoint)
    assert scores["val"]["r2"] > 0.3, scores
    assert scores["test"]["r2"] > 0.3, scores
    assert result.best_val_mse == pytest.approx(scores["val"]["mse"], rel=1e-5)
