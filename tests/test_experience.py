"""One benchmark experience (issue 17): each test is named after a fault a new user met."""

from __future__ import annotations

import fcntl
import glob
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
import tomllib
from pathlib import Path

import pytest
from _benchmarks_data import cloudmask_root, stemdl_uno_root
from _run_logs import run_folder

from scibench_data.cli import build_parser, main
from scibench_data.scoring.mllog import read_events

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("cloudmask", "stemdl", "uno")


def _env(**extra: str) -> dict:
    """The environment a user's shell would give (no TQDM_DISABLE from conftest), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _cli(args: list[str], env: dict, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scibench_data.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def _in_a_terminal(args: list[str], env: dict, timeout: int = 300) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (as a user sees it); returns (exit code, what it drew)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "scibench_data.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    code = proc.wait(timeout=timeout)
    reader.join(timeout=10)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def cloud_root(tmp_path_factory) -> str:
    return str(cloudmask_root(tmp_path_factory))


@pytest.fixture(scope="module")
def other_root(tmp_path_factory) -> str:
    return str(stemdl_uno_root(tmp_path_factory))


# --------------------------------------------------------------------------- item 1: workers, no main guard


@pytest.mark.slow
def test_script_without_main_guard_with_two_workers_runs_once_and_finishes(cloudmask_stores, tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(f"""
print("script body ran", flush=True)
from loaders.cloudmask import CloudMaskPatches, PatchSpec, patch_loader
patches = CloudMaskPatches({str(cloudmask_stores["hdf"])!r}, spec=PatchSpec("random", 32, 4, seed=1))
print("batches", sum(1 for _ in patch_loader(patches, batch_size=4, num_workers=2)), flush=True)
""")
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                             env=_env(), cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("a script without a __main__ guard hung with two DataLoader workers")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("script body ran") == 1 and "batches 3" in out.stdout, out.stdout


# --------------------------------------------------------------------------- item 2: missing stores


def test_missing_store_from_python_is_one_line_naming_entry_and_command(tmp_path):
    script = tmp_path / "open.py"
    script.write_text("import scibench_data\nscibench_data.open_catalog().stemdl.to_dask()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=_env(SCIBENCH_DATA_ROOT=str(tmp_path / "empty")))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert "During handling" not in out.stderr and len(lines) <= 8, out.stderr
    assert "catalog entry stemdl has no store yet" in lines[-1] and "scibench-data run stemdl" in lines[-1]


@pytest.mark.parametrize("entry,command", [("cloudmask_ds2", "scibench-data convert cloudmask --layout sen3"),
                                           ("candle_uno", "scibench-data run uno")])
def test_missing_store_of_any_entry_names_its_creating_command(tmp_path, entry, command):
    import scibench_data
    from scibench_data.catalog_source import MissingStoreError

    with pytest.raises(MissingStoreError) as err:
        getattr(scibench_data.open_catalog(root=str(tmp_path)), entry).to_dask()
    assert str(err.value).count("\n") == 0 and entry in str(err.value) and command in str(err.value)


@pytest.mark.parametrize("dataset,command", [("cloudmask", "scibench-data run cloudmask"),
                                             ("stemdl", "scibench-data run stemdl"),
                                             ("uno", "scibench-data run uno")])
def test_missing_store_from_cli_names_the_creating_command(tmp_path, capsys, dataset, command):
    assert main(["train", dataset, "--root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and command in err[0], err


# --------------------------------------------------------------------------- item 3: one shape


@pytest.mark.parametrize("dataset", BENCHMARKS)
def test_the_three_benchmarks_take_the_same_verbs_and_flags(dataset):
    benchmark = dataset
    parser = build_parser()
    common = ["--root", "r", "--epochs", "1", "--max-steps", "2", "--batch-size", "4", "--lr", "0.01", "--seed", "3",
              "--num-workers", "0", "--no-progress", "-q"]
    for argv in (["train", benchmark, *common, "--out", "o"], ["run", benchmark, *common, "--fresh"],
                 ["evaluate", benchmark, "--model", "m.pt", "--root", "r", "--out", "o", "-q"],
                 ["predict", benchmark, "--model", "m.pt", "--root", "r", "--out", "p.npz", "--debug"]):
        args = parser.parse_args(argv)
        assert callable(args.func), argv
    args = parser.parse_args(["show", benchmark, *(["--prediction", "p.npz"] if benchmark == "uno" else
                                                    ["--scene" if benchmark == "cloudmask" else "--sample", "0"])])
    assert args.out is None  # show writes under ROOT/outputs/BENCHMARK/pictures/ by default


def test_show_help_says_what_show_does(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("show "))
    assert line.split(maxsplit=1)[1].strip() not in ("show", ""), line


def test_uno_train_writes_under_root_outputs_candle_uno_like_the_others(other_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(other_root, root)
    assert main(["train", "uno", "--root", str(root), "--epochs", "1", "--width", "8", "-q"]) == 0
    assert glob.glob(str(root / "outputs" / "candle_uno" / "run-*" / "uno_model.pt"))
    assert not (root / "runs").exists()


@pytest.mark.slow
def test_run_uno_says_it_generates_raw_data_and_writes_predictions_show_score_and_from_run_accept(tmp_path, capsys):
    """run uno: raw data under ROOT/raw/candle_uno (said), outputs under ROOT/outputs/candle_uno/run-*, test
    predictions that score, show and submission from-run accept; the store and the log say synthetic."""
    import zarr

    from scibench_data.scoring.mllog import check_compliance
    from scibench_data.submission import validate

    root = tmp_path / "root"
    assert main(["run", "uno", "--root", str(root), "--epochs", "1", "--width", "16", "-q"]) == 0
    out = capsys.readouterr().out
    assert "generating synthetic CANDLE-UNO raw data" in out and str(root / "raw" / "candle_uno") in out
    (run,) = glob.glob(str(root / "outputs" / "candle_uno" / "run-*"))
    pred = Path(run) / "predictions-candle_uno.npz"
    assert pred.is_file() and (Path(run) / "result-0.txt").is_file()
    assert zarr.open_group(str(root / "candle_uno.zarr"), mode="r").attrs["scibench_synthetic"]
    assert any(e["key"] == "data_synthetic" and e["value"] is True for e in read_events(Path(run) / "result-0.txt"))
    assert check_compliance(Path(run) / "result-0.txt", "candle_uno") == []
    assert main(["score", "candle_uno", str(pred), "--root", str(root)]) == 0
    assert main(["show", "uno", "--prediction", str(pred), "--root", str(root)]) == 0
    assert (root / "outputs" / "candle_uno" / "pictures" / "test-predictions.png").is_file()
    subs = tmp_path / "subs"
    assert main(["submission", "from-run", run, "--out", str(subs), "--system", "cpu", "--descriptor", "demo",
                 "--root", str(root)]) == 0
    folder = subs / "scibench-data" / "candle_uno" / "cpu" / "demo"
    v = validate(folder, root=str(root))
    assert v.ok and v.rescored == ["predictions-0.npz"], v.lines()


CLOUD_SCORES = {"pixel_accuracy": 0.95, "f1": 0.9, "iou": 0.8, "log_loss": 0.2}
STEMDL_SCORES = {"top1": 0.5, "top5": 0.8, "macro_f1": 0.4}


def test_from_run_on_a_stemdl_run_never_overwrites_a_cloudmask_submission(tmp_path, capsys):
    subs = tmp_path / "subs"
    cloud = run_folder(tmp_path / "cloud-run", "cloudmask", CLOUD_SCORES)
    stem = run_folder(tmp_path / "stemdl-run", "stemdl", STEMDL_SCORES)
    flags = ["--out", str(subs), "--system", "cpu", "--descriptor", "demo"]
    assert main(["submission", "from-run", str(cloud), *flags]) == 0
    cloud_folder = subs / "scibench-data" / "cloudmask" / "cpu" / "demo"
    before = (cloud_folder / "result-0.txt").read_text()
    main(["submission", "from-run", str(stem), *flags])
    assert (cloud_folder / "result-0.txt").read_text() == before
    assert (subs / "scibench-data" / "stemdl" / "cpu" / "demo" / "result-0.txt").is_file()


def test_from_run_refuses_to_overwrite_an_existing_submission_without_force(tmp_path, capsys):
    subs = tmp_path / "subs"
    run = run_folder(tmp_path / "run", "cloudmask", CLOUD_SCORES)
    flags = ["submission", "from-run", str(run), "--out", str(subs), "--system", "cpu", "--descriptor", "demo"]
    assert main(flags) == 0
    capsys.readouterr()
    assert main(flags) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main([*flags, "--force"]) == 0


def test_from_run_never_replaces_a_folder_holding_another_benchmark_even_with_force(tmp_path, capsys):
    subs = tmp_path / "subs"
    run = run_folder(tmp_path / "run", "stemdl", STEMDL_SCORES)
    squatter = subs / "scibench-data" / "stemdl" / "cpu" / "demo"
    squatter.mkdir(parents=True)
    (squatter / "config.yaml").write_text("benchmark: cloudmask\n")
    assert main(["submission", "from-run", str(run), "--out", str(subs), "--system", "cpu", "--descriptor", "demo",
                 "--force"]) == 2
    assert "holds a cloudmask submission" in capsys.readouterr().err and (squatter / "config.yaml").is_file()


def test_synthetic_run_submission_says_synthetic_and_does_not_claim_pull_retrieval(tmp_path):
    import yaml

    from scibench_data.submission import from_run

    dest = from_run(run_folder(tmp_path / "run", "cloudmask", CLOUD_SCORES), tmp_path / "subs", "cpu", "demo")
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    assert cfg["data"]["synthetic"] is True
    assert not any("pull" in c for c in cfg["data"]["retrieval"]), cfg["data"]["retrieval"]
    assert "Synthetic data" in (dest / "README.md").read_text()


# --------------------------------------------------------------------------- show


def test_show_stemdl_reconstruction_draws_another_picture_than_classification(other_root, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(Path(other_root) / "stemdl.zarr", root / "stemdl.zarr")  # as run stemdl: same samples in both
    shutil.copytree(Path(other_root) / "stemdl.zarr", root / "stemdl_reconstruction.zarr")
    pictures = {}
    for task in ("classification", "reconstruction"):
        out = tmp_path / f"{task}.png"
        assert main(["show", "stemdl", "--sample", "0", "--task", task, "--root", str(root), "--out", str(out)]) == 0
        pictures[task] = out.read_bytes()
    assert pictures["classification"] != pictures["reconstruction"]


def test_binary_label_gets_two_named_colours_not_a_colour_bar(cloud_root):
    import matplotlib.pyplot as plt

    from scibench_data.show import cloudmask_figure

    fig = cloudmask_figure(0, cloud_root)
    label_ax = next(ax for ax in fig.axes if ax.get_title().startswith("label"))
    assert label_ax.images[0].colorbar is None
    assert [t.get_text() for t in label_ax.get_legend().get_texts()] == ["clear", "cloud"]
    plt.close(fig)


# --------------------------------------------------------------------------- item 5: progress, -q, --debug


@pytest.mark.slow
def test_training_progress_bar_counts_the_step_cap_not_ten_epochs(cloud_root, tmp_path):
    code, drawn = _in_a_terminal(["train", "cloudmask", "--root", cloud_root, "--epochs", "10", "--max-steps", "3",
                                  "--batch-size", "1", "--patch", "32", "--mode", "random",
                                  "--patches-per-scene", "1", "--out", str(tmp_path / "out")], _env())
    assert code == 0, drawn[-2000:]
    assert "train epoch 1/2 (3-step cap)" in drawn and "/10" not in drawn, drawn[-2000:]
    assert "1/1" in drawn.split("train epoch 2/2")[-1]  # the last epoch's bar: the one step left of the cap


def test_progress_bars_stay_off_when_output_is_not_a_terminal(cloudmask_raw, tmp_path):
    out = _cli(["convert", "cloudmask", "--layout", "hdf", str(cloudmask_raw["hdf"]), str(tmp_path / "s.zarr")],
               _env())
    assert out.returncode == 0, out.stderr
    assert "product/s" not in out.stderr and "%|" not in out.stderr, out.stderr[:500]


def test_quiet_flag_silences_progress_bars_even_in_a_terminal(cloudmask_raw, tmp_path):
    code, drawn = _in_a_terminal(["convert", "cloudmask", "--layout", "hdf", str(cloudmask_raw["hdf"]),
                                  str(tmp_path / "s.zarr"), "-q"], _env())
    assert code == 0 and "%|" not in drawn, drawn[-1000:]
    code, drawn = _in_a_terminal(["convert", "cloudmask", "--layout", "hdf", str(cloudmask_raw["hdf"]),
                                  str(tmp_path / "t.zarr")], _env(TQDM_DISABLE="1"))
    assert code == 0 and "%|" not in drawn, drawn[-1000:]


def test_debug_prints_the_traceback_and_info_logs(cloud_root, tmp_path):
    out = _cli(["--debug", "train", "cloudmask", "--root", str(tmp_path / "empty")], _env())
    assert out.returncode == 2 and "Traceback (most recent call last)" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("scibench-data: error: catalog entry cloudmask_ds1")
    out = _cli(["evaluate", "cloudmask", "--model", str(tmp_path / "missing.pt"), "--root", cloud_root, "--debug"],
               _env())
    assert out.returncode == 2 and "INFO scibench_data.pipelines.cloudmask: opened catalog entry" in out.stderr, \
        out.stderr[-1500:]


# --------------------------------------------------------------------------- item 8: nothing in the cwd


@pytest.mark.parametrize("argv", [["train", "cloudmask"], ["train", "stemdl"], ["train", "uno"],
                                  ["evaluate", "cloudmask", "--model", "missing.pt"],
                                  ["evaluate", "stemdl", "--model", "missing.pt"],
                                  ["evaluate", "uno", "--model", "missing.pt"]])
def test_failed_train_and_evaluate_write_nothing_in_the_current_folder(tmp_path, monkeypatch, capsys, argv):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main([*argv, "--root", str(tmp_path / "empty")]) == 2
    assert list(cwd.iterdir()) == []
    assert not (tmp_path / "empty").exists()


def test_test_only_libraries_are_not_runtime_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    test = " ".join(project["optional-dependencies"]["test"])
    for lib, module in (("torchmetrics", "torchmetrics"), ("scikit-learn", "sklearn")):
        assert lib not in runtime and lib in test, lib
        used = [p for d in ("scibench_data", "loaders", "reference_models") for p in (REPO / d).rglob("*.py")
                if f"import {module}" in p.read_text() or f"from {module}" in p.read_text()]
        assert used == [], used


# --------------------------------------------------------------------------- item 7: the maintained checker


def test_mllog_checks_run_through_mlperf_logging_compliance_checker(tmp_path):
    from scibench_data.registry import REGISTRY
    from scibench_data.scoring.mllog import COMPLIANCE_DIR, check_compliance

    assert {p.stem for p in COMPLIANCE_DIR.glob("*.yaml")} == {"common", *REGISTRY}
    good = run_folder(tmp_path / "good", "cloudmask", CLOUD_SCORES) / "result-0.txt"
    assert check_compliance(good, "cloudmask") == []
    problems = check_compliance(good, "stemdl")  # the wrong benchmark's config
    assert any("submission_benchmark" in p for p in problems) and any("'result'" in p for p in problems), problems
    lines = [ln for ln in good.read_text().splitlines() if '"staging_stop"' not in ln]
    (tmp_path / "no_staging.txt").write_text("\n".join(lines) + "\n")
    assert any("staging_stop" in p for p in check_compliance(tmp_path / "no_staging.txt", "cloudmask"))
