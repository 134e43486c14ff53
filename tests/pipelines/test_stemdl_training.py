"""STEMDL through the catalog: loaders (DataLoader workers included), short training runs, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _stemdl_data import write_tiny
from torch.utils.data import DataLoader

from loaders.stemdl import (
    STEMDLClassification,
    from_catalog,
    numpy_batches,
    projection_choice,
    scale_input,
    split_indices,
)
from scibench_data.catalog import open_catalog
from scibench_data.cli import main
from scibench_data.convert.stemdl import STEMDLConversion, convert_stemdl
from scibench_data.pipelines.stemdl import TrainConfig, evaluate, mean_image, train
from scibench_data.scoring.mllog import BenchmarkLog, read_events
from scibench_data.synthetic.stemdl import SyntheticSTEMDL

pytestmark = pytest.mark.filterwarnings("ignore:Shell command not executed")

#: 4 classes x 10 materials (6 train, 2 dev, 2 test) x 2 samples of 64x64 patterns; stores at 32x32.
SMALL = SyntheticSTEMDL(n_classes=4, materials_per_class=10, samples_per_material=2, pattern=64, samples_per_file=8)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("stemdl_root")
    src = write_tiny(base, "raw", SMALL)
    for entry in ("stemdl", "stemdl_reconstruction"):
        report = convert_stemdl(str(src), str(base / f"{entry}.zarr"),
                                STEMDLConversion(preprocess=True, size=32, progress=False))
        assert report.ok
    return str(base)


def test_catalog_opens_both_entries_lazily(root):
    cat = open_catalog(root=root)
    for entry in ("stemdl", "stemdl_reconstruction"):
        ds = getattr(cat, entry).to_dask()
        assert ds["cbed"].chunks is not None and ds.sizes["sample"] == SMALL.n_samples
        assert ds.attrs["scibench_format"] == "stemdl"


def test_pure_helpers():
    np.testing.assert_allclose(scale_input(np.array([0.0, 127.5, 255.0]), preprocessed=True), [0, 0.5, 1])
    np.testing.assert_allclose(scale_input(np.array([1.0, 0.0]), preprocessed=False), [170 / 255, 0])
    assert split_indices(np.array(["train", "dev", "train"]), "train").tolist() == [0, 2]
    with pytest.raises(ValueError, match="no samples in split 'inference'"):
        split_indices(np.array(["train"]), "inference")
    assert {projection_choice(0, 0, i) for i in range(30)} == {0, 1, 2}
    assert projection_choice(5, 2, 7) == projection_choice(5, 2, 7)


def test_dataloader_with_two_workers_reads_what_one_process_reads(root):
    data = from_catalog("classification", "train", root)
    assert len(data) == 48  # 4 classes x 6 training materials x 2 samples
    serial = [data[i] for i in range(len(data))]
    loader = DataLoader(data, batch_size=8, num_workers=2, shuffle=False)
    xs, ys = zip(*loader)
    torch.testing.assert_close(torch.cat(xs), torch.stack([x for x, _ in serial]))
    torch.testing.assert_close(torch.cat(ys), torch.stack([y for _, y in serial]))
    assert torch.cat(xs).shape == (48, 3, 32, 32) and 0 <= float(torch.cat(xs).min()) <= float(torch.cat(xs).max()) <= 1


def test_projection_modes_and_numpy_batches(root):
    one = from_catalog("classification", "test", root, mode="random_projection", seed=3)
    full = from_catalog("classification", "test", root, mode="projections")
    x1, y1 = one[0]
    xs, ys = full[0]
    assert x1.shape == (1, 32, 32) and xs.shape == (3, 1, 32, 32) and int(y1) == int(ys)
    k = projection_choice(3, 0, int(one.indices[0]))
    torch.testing.assert_close(x1, xs[k])
    with pytest.raises(ValueError, match="mode must be one of"):
        STEMDLClassification(one.handle.location, [0], [1], True, mode="all")
    rec = from_catalog("reconstruction", "dev", root)
    batches = list(numpy_batches(rec, batch_size=5, shuffle=True, seed=1))
    assert [b[0].shape[0] for b in batches] == [5, 5, 5, 1]
    assert batches[0][0].shape == (5, 3, 32, 32) and batches[0][1].shape == (5, 1, 32, 32)
    assert batches[0][0].dtype == np.float32


def test_short_training_is_far_above_chance(root, tmp_path):
    cfg = TrainConfig(model="resnet-small", epochs=10, batch_size=8, learning_rate=3e-3, seed=0, select_split=None)
    with BenchmarkLog(tmp_path / "result-0.txt", "stemdl") as log:
        result = train(root, cfg, tmp_path, log=log, progress=False)
        scores = evaluate(root, result.model_path, "test", tmp_path, log=log, progress=False)
    assert scores["n_samples"] == 16 and scores["chance_top1"] == 0.25
    assert scores["scores"]["top1"] >= 0.6, scores  # chance is 0.25; materials are unseen in training
    assert scores["scores"]["top5"] == 1.0  # only 4 classes exist
    written = json.loads((tmp_path / "scores-classification.json").read_text())
    assert written["scores"] == scores["scores"] and written["benchmark"] == "stemdl"
    keys = {e["key"] for e in read_events(tmp_path / "result-0.txt")}
    assert {"submission_benchmark", "seed", "train_samples", "eval_top1", "eval_stop"} <= keys


def test_reconstruction_beats_the_mean_image(root, tmp_path):
    cfg = TrainConfig(task="reconstruction", epochs=20, batch_size=8, learning_rate=3e-3, widths=(8, 16, 32), seed=0,
                      select_split=None)
    result = train(root, cfg, tmp_path, progress=False)
    scores = evaluate(root, result.model_path, "test", tmp_path, progress=False)
    baseline = scores["baseline_mean_image_mse"]
    target = from_catalog("reconstruction", "test", root, as_torch=False)
    targets = np.stack([target[i][1] for i in range(len(target))])
    assert baseline == pytest.approx(float(((targets - mean_image(root)) ** 2).mean()))
    assert scores["scores"]["mse"] < 0.8 * baseline, (scores, baseline)


def test_cli_train_and_evaluate(root, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "stemdl", "--root", root, "--arch", "resnet-small", "--input-mode", "random_projection",
                 "--epochs", "1", "--batch-size", "16", "--out", str(out), "--no-progress"]) == 0
    assert main(["evaluate", "stemdl", "--model", str(out / "model-classification.pt"), "--root", root, "--split", "dev",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "top1" in printed and "macro_f1" in printed
    assert json.loads((out / "scores-classification.json").read_text())["split"] == "dev"
