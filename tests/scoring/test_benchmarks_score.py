"""``score``: prediction files (NPZ and Zarr) against the catalog's test split, good and misaligned."""

from __future__ import annotations

import numpy as np
import pytest
from _benchmarks_data import cloudmask_root, stemdl_uno_root

from loaders.cloudmask import read_scene
from scibench_data.catalog import open_catalog, store_url
from scibench_data.cli import main
from scibench_data.registry import data_sizes, describe, get
from scibench_data.scoring.predictions import (
    PredictionError,
    load_truth,
    save_predictions,
    score_predictions,
)
from scibench_data.scoring.segmentation import average_scores, scene_scores


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return cloudmask_root(tmp_path_factory)


@pytest.fixture(scope="module")
def truth(root):
    ds = open_catalog(root=str(root)).cloudmask_ds1.to_dask()
    return load_truth(get("cloudmask"), ds)


def _probabilities(truth, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.nan_to_num(np.asarray(truth.values.compute()))
    return np.clip(t * 0.7 + rng.random(t.shape) * 0.5, 0, 1).astype(np.float32)


def test_test_split_is_the_inference_scenes(root, truth):
    ds = open_catalog(root=str(root)).cloudmask_ds1.to_dask()
    assert [str(ds["split"].values[i]) for i in truth.indices] == ["inference", "inference"]
    assert truth.sample_shape == (64, 96)


@pytest.mark.parametrize("suffix", [".npz", ".zarr"])
def test_scores_a_good_prediction_file_as_the_pipeline_would(root, truth, tmp_path, suffix):
    prob = _probabilities(truth)
    # shuffled order: predictions are put back in store order by their ids
    path = save_predictions(tmp_path / f"p{suffix}", "cloudmask", prob[::-1], source_name=truth.ids["source_name"][::-1])
    expected = average_scores([scene_scores(p, read_scene(str(root / "cloudmask_ds1.zarr"), int(s))[1])
                               for p, s in zip(prob, truth.indices)])
    for backend in ("numpy", "dask"):
        result = score_predictions("cloudmask", path, root=str(root), backend=backend)
        assert result.n_samples == 2 and result.split == "test"
        for k, v in expected.items():
            assert result.scores[k] == pytest.approx(v, rel=1e-9), (backend, k)


def test_score_command_prints_the_table(root, truth, tmp_path, capsys):
    path = save_predictions(tmp_path / "p.npz", "cloudmask", _probabilities(truth), **truth.ids)
    out = tmp_path / "scores.json"
    assert main(["score", "cloudmask", str(path), "--root", str(root), "--backend", "dask", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pixel_accuracy" in text and "0.9000" in text and "2 samples" in text
    assert '"benchmark": "cloudmask"' in out.read_text()


def _bad_cases(truth):
    prob = _probabilities(truth)
    names = truth.ids["source_name"]
    return {
        "missing scene": ({"probability": prob[:1], "source_name": names[:1]},
                          "1 test sample(s) missing, e.g. ('S3A_SL_1_RBT"),
        "foreign scene": ({"probability": prob, "source_name": np.array([names[0], "S3B_not_a_test_scene"])},
                          "1 sample(s) not in the test split, e.g. ('S3B_not_a_test_scene',)"),
        "repeated scene": ({"probability": prob, "source_name": np.array([names[0], names[0]])},
                           "1 repeated sample id(s) in source_name"),
        "wrong grid": ({"probability": prob[:, :32], "source_name": names},
                       "probability per-scene shape (32, 96) does not match the store's {'y': 64, 'x': 96}"),
        "wrong rank": ({"probability": prob[:, 0], "source_name": names},
                       "probability must have dims ('scene', 'y', 'x'), got 2-D"),
        "length mismatch": ({"probability": prob, "source_name": names[:1]},
                            "probability has 2 scenes but the ids have 1"),
        "no ids": ({"probability": prob}, "missing variable(s) ['source_name'] for benchmark cloudmask"),
        "integers": ({"probability": (prob > 0.5).astype(np.int8), "source_name": names},
                     "probability must be floating point, got int8"),
        "not a probability": ({"probability": prob * 3, "source_name": names},
                              "probability must be in [0, 1] (no NaN)"),
    }


@pytest.mark.parametrize("case", ["missing scene", "foreign scene", "repeated scene", "wrong grid", "wrong rank",
                                  "length mismatch", "no ids", "integers", "not a probability"])
def test_refuses_misaligned_or_misshaped_predictions(root, truth, tmp_path, case):
    arrays, message = _bad_cases(truth)[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(PredictionError) as err:
        score_predictions("cloudmask", path, root=str(root))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_score_command_exits_2_with_one_line_for_bad_files(root, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", probability=np.zeros((2, 64, 96), np.float32))
    assert main(["score", "cloudmask", str(tmp_path / "bad.npz"), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scibench-data: error: ") and "missing variable(s) ['source_name']" in err
    assert len(err.splitlines()) == 1
    assert main(["score", "cloudmask", str(tmp_path / "none.npz"), "--root", str(root)]) == 2
    assert "no such prediction file" in capsys.readouterr().err
    assert main(["score", "cloudmask", str(tmp_path / "bad.npz"), "--root", str(tmp_path / "empty")]) == 2
    assert "cannot open catalog entry cloudmask_ds1" in capsys.readouterr().err


def test_sizes_from_catalog_and_measured_from_the_local_store(root, tmp_path):
    s = data_sizes(get("cloudmask"), str(root))
    assert s.catalog_uncompressed == 73_188_000_000 and s.compressed_is_estimate
    assert s.store == store_url("cloudmask_ds1", str(root))
    # 4 scenes x 64 x 96 x (9 float32 + 2 uint8) plus coordinates
    assert s.measured_uncompressed >= 4 * 64 * 96 * (9 * 4 + 2)
    assert 0 < s.measured_compressed < s.measured_uncompressed
    absent = data_sizes(get("cloudmask"), str(tmp_path))
    assert absent.store is None and absent.measured_compressed is None
    text = describe(str(root))
    assert "cloudmask_ds1" in text and "73.2 GB uncompressed" in text and "local store" in text
    assert "candle_uno" in text and "val_r2 0.7486" in text


def test_benchmarks_command_lists_all(root, capsys):
    assert main(["benchmarks", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    for name in ("cloudmask:", "stemdl:", "stemdl_reconstruction:", "candle_uno:"):
        assert name in out


# --------------------------------------------------------------------------- STEMDL and CANDLE-UNO stores


@pytest.fixture(scope="module")
def other_root(tmp_path_factory):
    return str(stemdl_uno_root(tmp_path_factory))


@pytest.mark.parametrize("name", ["stemdl", "stemdl_reconstruction", "candle_uno"])
def test_other_benchmarks_score_against_their_stores(other_root, tmp_path, name):
    b = get(name)
    ds = getattr(open_catalog(root=other_root), b.entry).to_dask()
    truth = load_truth(b, ds)
    t = np.asarray(truth.values.compute())
    rng = np.random.default_rng(9)
    if name == "stemdl":
        values = rng.normal(size=(len(t), *truth.sample_shape)).astype(np.float32)
        values[np.arange(len(t)), t] += 10.0  # every sample right
        expected = {"top1": 1.0, "top5": 1.0, "macro_f1": 1.0}
    else:
        values = t.astype(np.float32)
        expected = {"mse": 0.0, "ssim": 1.0} if name == "stemdl_reconstruction" else {"mse": 0.0, "r2": 1.0}
    path = save_predictions(tmp_path / "p.zarr", b, values, **truth.ids)
    for backend in ("numpy", "dask"):
        scores = score_predictions(b, path, root=other_root, backend=backend).scores
        for k, v in expected.items():
            assert scores[k] == pytest.approx(v, abs=1e-6), (backend, k)
    # misaligned: one sample's id replaced
    ids = {k: v.copy() for k, v in truth.ids.items()}
    first = b.prediction.ids[-1]
    ids[first] = ids[first].astype(object) if ids[first].dtype.kind == "U" else ids[first]
    ids[first][0] = "nope" if ids[first].dtype == object else -5
    bad = save_predictions(tmp_path / "bad.npz", b, values, **ids)
    with pytest.raises(PredictionError, match="not aligned with the test split"):
        score_predictions(b, bad, root=other_root)


def test_stemdl_scores_need_one_column_per_class(other_root, tmp_path):
    b = get("stemdl")
    truth = load_truth(b, open_catalog(root=other_root).stemdl.to_dask())
    path = save_predictions(tmp_path / "p.npz", b, np.zeros((len(truth.indices), 10), np.float32), **truth.ids)
    with pytest.raises(PredictionError, match=r"scores per-sample shape \(10,\) does not match the store's \{'class': 231\}"):
        score_predictions(b, path, root=other_root)
