"""The command line: convert, exit codes and error messages for bad input."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from scibench_data.cli import main


def test_convert_via_cli_and_report(cloudmask_raw, tmp_path, capsys):
    dest = tmp_path / "c.zarr"
    rc = main(["convert", "cloudmask", "--layout", "sen3", str(cloudmask_raw["sen3"]), str(dest), "--no-progress",
               "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "status: complete" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["complete"] and len(report["converted"]) == 3 and report["failed"] == []


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    rc = main(["convert", "cloudmask", "--layout", "hdf", str(tmp_path / "nope"), str(tmp_path / "d.zarr")])
    assert rc == 2
    assert f"source folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    ("nan", "every pixel of every channel is NaN or a fill value"),
    ("shape", "dataset 'bts' has shape (64, 96, 2), expected (H, W, 3)"),
    ("dtype", "dataset 'refs' has non-numeric dtype"),
    ("grid", "grid (32, 96) differs from the store's (64, 96)"),
])
def test_bad_product_fails_by_name_rest_converts_exit_1(cloudmask_raw, tmp_path, capsys, damage, message):
    src = tmp_path / "src"
    shutil.copytree(cloudmask_raw["hdf"], src)
    victim = sorted(p for p in src.iterdir() if p.suffix == ".hdf")[-1]
    with h5py.File(victim, "a") as f:
        if damage == "nan":
            for k in ("refs", "bts"):
                f[k][...] = np.nan
        elif damage == "shape":
            del f["bts"]
            f["bts"] = np.zeros((64, 96, 2), np.float32)
        elif damage == "dtype":
            del f["refs"]
            f["refs"] = np.full((64, 96, 6), b"x", dtype="S1")
        else:
            for k in ("refs", "rads", "bts", "bayes", "summary"):
                data = f[k][:32]
                del f[k]
                f[k] = data
    rc = main(["convert", "cloudmask", "--layout", "hdf", str(src), str(tmp_path / "o.zarr"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"failed {victim.name}" in out and message in out
    assert "2 converted now" in out and "INCOMPLETE" in out


@pytest.mark.slow
def test_train_and_evaluate_commands_write_model_scores_and_mllog(cloudmask_training_root, tmp_path, capsys):
    from scibench_data.scoring.mllog import read_events

    out = tmp_path / "out"
    assert main(["train", "cloudmask", "--root", str(cloudmask_training_root), "--out", str(out), "--patch", "64",
                 "--batch-size", "4", "--max-steps", "2", "--no-progress"]) == 0
    assert (out / "model.pt").exists()
    assert main(["evaluate", "cloudmask", "--root", str(cloudmask_training_root), "--model", str(out / "model.pt"),
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pixel_accuracy" in printed and "best single-channel threshold" in printed
    scores = json.loads((out / "scores.json").read_text())["scores"]
    assert set(scores) == {"pixel_accuracy", "f1", "iou", "log_loss"}
    train_keys = [e["key"] for e in read_events(out / "train-mllog.txt")]
    assert {"run_start", "seed", "global_batch_size", "epoch_start", "run_stop"} <= set(train_keys)
    result = [e for e in read_events(out / "eval-mllog.txt") if e["key"] == "result"]
    assert result and result[0]["value"] == scores


def test_break_lock_removes_a_live_writers_lock(cloudmask_raw, tmp_path, capsys):
    import subprocess
    import sys

    dest = tmp_path / "locked.zarr"
    (dest / "_scibench").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (dest / "_scibench" / "lock.json").write_text(json.dumps(
            {"pid": holder.pid, "host": __import__("socket").gethostname(), "operation": "convert"}))
        args = ["convert", "cloudmask", "--layout", "hdf", str(cloudmask_raw["hdf"]), str(dest), "--no-progress"]
        assert main(args) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert main(args + ["--break-lock"]) == 0
        out = capsys.readouterr().out
        assert f"removed the lock of {dest}" in out and "status: complete" in out
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", [["append", "cloudmask"], ["scaffold", "cloudmask_ds2", "--scenes", "4"]])
def test_a_locked_append_or_scaffold_takes_the_break_lock_its_error_names(cloudmask_raw, tmp_path, capsys, command):
    dest = tmp_path / "locked.zarr"
    src = str(cloudmask_raw["hdf"])
    if command[0] == "append":
        assert main(["convert", "cloudmask", "--layout", "hdf", src, str(dest), "--no-progress"]) == 0
    (dest / "_scibench").mkdir(parents=True, exist_ok=True)
    (dest / "_scibench" / "lock.json").write_text(json.dumps(
        {"pid": 1, "host": "another-host", "operation": "convert", "since": "2026-01-01T00:00:00Z"}))
    capsys.readouterr()
    args = command + ["--layout", "hdf", src, str(dest), "--no-progress"]
    assert main(args) == 2
    assert "--break-lock" in capsys.readouterr().err
    assert main(args + ["--break-lock"]) == 0
    assert f"removed the lock of {dest}" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["append", "cloudmask"], ["convert", "cloudmask", "--append"]])
def test_both_append_commands_say_how_many_products_they_appended(cloudmask_raw, tmp_path, capsys, command):
    """``convert cloudmask --append`` printed no "appended" line, where ``append cloudmask`` did."""
    products = sorted(p for p in cloudmask_raw["hdf"].iterdir() if p.suffix == ".hdf")
    first, rest = tmp_path / "first", tmp_path / "rest"
    first.mkdir()
    rest.mkdir()
    shutil.copy(products[0], first / products[0].name)
    for p in products[1:]:
        shutil.copy(p, rest / p.name)
    dest = tmp_path / "grown.zarr"
    assert main(["convert", "cloudmask", "--layout", "hdf", str(first), str(dest), "--no-progress"]) == 0
    capsys.readouterr()
    assert main([*command, "--layout", "hdf", str(rest), str(dest), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"appended: {len(products) - 1} product(s)" in out, out
    assert out.count("appended: ") == 1, out
