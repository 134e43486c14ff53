"""Submissions: write, validate (good and broken), leaderboard and ``show`` pictures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _benchmarks_data import cloudmask_root, image_stats, stemdl_uno_root

from scibench_data.catalog import open_catalog
from scibench_data.cli import main
from scibench_data.registry import get
from scibench_data.scoring.predictions import load_truth, save_predictions
from scibench_data.submission import (
    SubmissionInfo,
    validate,
    write_run_log,
    write_submission,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(cloudmask_root(tmp_path_factory))


@pytest.fixture(scope="module")
def predictions(root, tmp_path_factory):
    truth = load_truth(get("cloudmask"), open_catalog(root=root).cloudmask_ds1.to_dask())
    t = np.nan_to_num(np.asarray(truth.values.compute()))
    rng = np.random.default_rng(1)
    prob = np.clip(t * 0.6 + rng.random(t.shape) * 0.5, 0, 1).astype(np.float32)
    return save_predictions(tmp_path_factory.mktemp("pred") / "p.npz", "cloudmask", prob, **truth.ids)


@pytest.fixture(scope="module")
def good(root, predictions, tmp_path_factory) -> Path:
    """A submission made by the CLI from a prediction file: scores, log, config, README."""
    out = tmp_path_factory.mktemp("subs")
    assert main(["submission", "create", "cloudmask", str(predictions), "--out", str(out), "--org", "acme",
                 "--system", "laptop-2core", "--descriptor", "baseline", "--root", root,
                 "--run", "python predict.py"]) == 0
    return out / "acme" / "cloudmask" / "laptop-2core" / "baseline"


def _copy(good: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "subs" / "acme" / "cloudmask" / "laptop-2core" / "baseline"
    shutil.copytree(good, dest)
    return dest


def test_good_submission_has_the_layout_and_validates_with_rescoring(good, root, capsys):
    assert sorted(p.name for p in good.iterdir()) == ["README.md", "config.yaml", "predictions-0.npz", "result-0.txt"]
    v = validate(good, root=root)
    assert v.ok, v.lines()
    assert v.rescored == ["predictions-0.npz"] and len(v.runs) == 1
    run = v.runs[0]
    assert run.scores["pixel_accuracy"] > 0.5 and 0 <= run.staging_s <= run.time_to_solution_s
    assert main(["submission", "validate", str(good), "--root", root]) == 0
    assert "valid submission (1 run(s); scores recomputed from predictions-0.npz)" in capsys.readouterr().out
    assert "python predict.py" in (good / "README.md").read_text()
    assert "scibench-data pull cloudmask_ds1" in (good / "config.yaml").read_text()


def _edit_log(path: Path, key: str, edit) -> None:
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        ev = json.loads(line.removeprefix(":::MLLOG "))
        if ev["key"] == key:
            line = edit(ev, line)
            if line is None:
                continue
        out.append(line)
    path.write_text("\n".join(out) + "\n")


def _mismatch(ev, _line):
    ev["value"]["pixel_accuracy"] += 0.05
    return ":::MLLOG " + json.dumps(ev)


BROKEN = {
    "missing README": (lambda d: (d / "README.md").unlink(), "README.md: required file is missing"),
    "missing result": (lambda d: (d / "result-0.txt").unlink(), "result-0.txt: required file is missing"),
    "bad log line": (lambda d: (d / "result-0.txt").open("a").write("epoch 3 loss 0.1\n"),
                     "result-0.txt:17: not an mllog line (must start with ':::MLLOG ')"),
    "truncated JSON": (lambda d: (d / "result-0.txt").open("a").write(':::MLLOG {"key": "result", \n'),
                       "result-0.txt:17: malformed JSON"),
    "no staging": (lambda d: _edit_log(d / "result-0.txt", "staging_stop", lambda e, l: None),
                   "result-0.txt: missing required mllog key(s): staging_stop"),
    "score mismatch": (lambda d: _edit_log(d / "result-0.txt", "result", _mismatch),
                       "result-0.txt: logged pixel_accuracy"),
    "wrong org": (lambda d: _edit_log(d / "result-0.txt", "submission_org",
                                      lambda e, l: l.replace('"acme"', '"other"')),
                  "result-0.txt: submission_org is 'other' but the folder is 'acme'"),
    "no code version": (lambda d: (d / "config.yaml").write_text((d / "config.yaml").read_text().replace(
        "  version:", "  tag:")), "config.yaml: code.version is required"),
    "misaligned predictions": (lambda d: np.savez(d / "predictions-0.npz", probability=np.zeros((1, 64, 96), np.float32),
                                                  source_name=np.array(["x"])),
                               "predictions-0.npz: predictions are not aligned with the test split"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_submission_is_rejected_with_its_own_message(good, root, tmp_path, capsys, case):
    breaker, message = BROKEN[case]
    folder = _copy(good, tmp_path)
    breaker(folder)
    v = validate(folder, root=root)
    assert not v.ok
    lines = v.lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(str(folder)) and message in lines[0], (lines[0], message)
    assert main(["submission", "validate", str(folder), "--root", root]) == 1
    assert capsys.readouterr().out.strip() == lines[0]


def test_score_mismatch_message_gives_both_values(good, root, tmp_path):
    folder = _copy(good, tmp_path)
    _edit_log(folder / "result-0.txt", "result", _mismatch)
    (line,) = validate(folder, root=root).lines()
    assert "does not match" in line and "recomputed from predictions-0.npz" in line
    # without rescoring (no data needed) the same folder passes
    assert validate(folder, rescore=False).ok


def test_not_in_the_layout_and_unknown_benchmark(tmp_path, good):
    dest = tmp_path / "acme" / "imagenet" / "sys" / "d"
    shutil.copytree(good, dest)
    problems = validate(dest, rescore=False).lines()
    assert any("'imagenet' is not a benchmark" in p for p in problems)


def test_submission_info_is_validated():
    with pytest.raises(ValueError, match="system must be letters"):
        SubmissionInfo("acme", "cloudmask", "my system/1", "d", "v1", data_retrieval=("x",))
    with pytest.raises(KeyError, match="unknown benchmark"):
        SubmissionInfo("acme", "imagenet", "s", "d", "v1", data_retrieval=("x",))
    with pytest.raises(ValueError, match="data_retrieval needs at least one command"):
        SubmissionInfo("acme", "cloudmask", "s", "d", "v1")


def _submission(base: Path, org: str, system: str, scores: dict, benchmark: str = "cloudmask") -> Path:
    info = SubmissionInfo(org, benchmark, system, "d1", "v1", data_retrieval=("scibench-data pull x",))
    log = base / f"tmp-{org}-{system}.txt"
    write_run_log(log, info, lambda: (scores, 2))
    return write_submission(base / "subs", info, [log])


def test_leaderboard_ranks_submissions_and_renders_pages_and_plots(tmp_path, capsys):
    _submission(tmp_path, "acme", "gpu", {"pixel_accuracy": 0.91, "f1": 0.8, "iou": 0.7, "log_loss": 0.3})
    _submission(tmp_path, "zeta", "cpu", {"pixel_accuracy": 0.85, "f1": 0.7, "iou": 0.6, "log_loss": 0.4})
    _submission(tmp_path, "uno-lab", "a100", {"r2": 0.70, "mse": 0.006, "mae": 0.05, "pearson": 0.84}, "candle_uno")
    broken = _submission(tmp_path, "bad", "cpu", {"f1": 0.9, "iou": 0.1, "log_loss": 0.1})  # no primary metric
    out = tmp_path / "site"
    assert main(["leaderboard", str(tmp_path / "subs"), "--out", str(out)]) == 0
    md = (out / "index.md").read_text()
    section = md.split("## CloudMask")[1].split("## ")[0]
    cloud = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| rank")]
    assert [c.split("|")[2].strip() for c in cloud] == ["acme", "MLCommons", "reference", "zeta"]  # 0.91 > 0.9 > 0.896 > 0.85
    assert cloud[0].startswith("| 1 | acme") and cloud[3].startswith("| 2 | zeta")
    assert "| 1 | uno-lab | a100 | [d1](../subs/uno-lab/candle_uno/a100/d1/) | 0.7000 |" in md
    assert "| ref | MLCommons | target | target r2 | 0.7486 |" in md
    assert "result lacks the primary metric 'pixel_accuracy'" in md and str(broken.name) in md
    page = (out / "index.html").read_text()
    assert page.count("<table>") == 4 and '<img src="cloudmask.png"' in page and "<td>acme</td>" in page
    for name in ("cloudmask", "candle_uno"):
        shape, var = image_stats(out / f"{name}.png")
        assert shape[:2] == (420, 640) and var > 1e-3, name
    for name in ("stemdl", "stemdl_reconstruction"):  # no submission: one line, no empty plot
        assert not (out / f"{name}.png").exists() and f'<img src="{name}.png"' not in page


def test_show_cloudmask_png_with_prediction(root, predictions, tmp_path, capsys):
    test_scene = int(load_truth(get("cloudmask"), open_catalog(root=root).cloudmask_ds1.to_dask()).indices[0])
    out = tmp_path / "scene.png"
    assert main(["show", "cloudmask", "--scene", str(test_scene), "--prediction", str(predictions), "--root", root,
                 "--out", str(out)]) == 0
    shape, var = image_stats(out)
    assert shape[:2] == (360, 1600) and var > 1e-3
    plain = tmp_path / "plain.png"
    assert main(["show", "cloudmask", "--scene", "0", "--root", root, "--out", str(plain)]) == 0
    assert image_stats(plain)[0][:2] == (360, 1200)
    assert main(["show", "cloudmask", "--scene", "0", "--prediction", str(predictions), "--root", root,
                 "--out", str(plain)]) == 2  # scene 0 is a training scene: not in the predictions
    assert "no prediction(s) for sample" in capsys.readouterr().err
    assert main(["show", "cloudmask", "--scene", "99", "--root", root, "--out", str(plain)]) == 2
    assert "scene 99 out of range 0..3" in capsys.readouterr().err


def test_show_stemdl_and_uno_pngs(tmp_path_factory, tmp_path):
    other = str(stemdl_uno_root(tmp_path_factory))
    b = get("candle_uno")
    truth = load_truth(b, open_catalog(root=other).candle_uno.to_dask())
    y = np.asarray(truth.values.compute())
    pred = save_predictions(tmp_path / "uno.npz", b, (y + np.random.default_rng(0).normal(0, 0.02, y.shape))
                            .astype(np.float32), **truth.ids)
    assert main(["show", "uno", "--prediction", str(pred), "--root", other, "--out", str(tmp_path / "uno.png")]) == 0
    shape, var = image_stats(tmp_path / "uno.png")
    assert shape[:2] == (500, 500) and var > 1e-4
    assert main(["show", "stemdl", "--sample", "0", "--root", other, "--out", str(tmp_path / "cbed.png")]) == 0
    shape, var = image_stats(tmp_path / "cbed.png")
    assert shape[1] > shape[0] and var > 1e-3


def test_submission_from_a_cloudmask_run_folder_validates(root, tmp_path, capsys):
    """A run folder as ``scibench-data run cloudmask`` leaves it (log, model.pt), made by the real train and
    evaluate steps on the tiny store; ``from-run --predict`` adds predictions that rescore to the logged result."""
    from scibench_data.pipelines.cloudmask import TrainConfig, evaluate, train
    from scibench_data.scoring.mllog import BenchmarkLog

    run_dir = tmp_path / "run-1"
    with BenchmarkLog(run_dir / "result-0.txt", "cloudmask") as log:
        log.start("init_start")
        log.end("init_stop")
        log.start("run_start")
        with log.interval("staging"):
            pass
        cfg = TrainConfig(mode="random", patch=32, patches_per_scene=1, batch_size=2, max_steps=1)
        result = train(root, cfg, run_dir, log=log, progress=False)
        evaluate(root, result.model_path, outdir=run_dir, log=log, progress=False, baseline=False)
        log.end("run_stop", metadata={"status": "success"})
    subs = tmp_path / "subs"
    assert main(["submission", "from-run", str(run_dir), "--out", str(subs), "--system", "cpu", "--descriptor",
                 "unet-1step", "--predict", "--root", root]) == 0
    folder = subs / "scibench-data" / "cloudmask" / "cpu" / "unet-1step"
    assert (folder / "predictions-0.npz").is_file()
    v = validate(folder, root=root)
    assert v.ok and v.rescored == ["predictions-0.npz"], v.lines()
