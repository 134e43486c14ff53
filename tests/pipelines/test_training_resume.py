"""``scibench-data train BENCHMARK --resume`` continues exactly where a stopped or killed run left
off (issue 16), and ``torchrun`` runs a training pipeline on two gloo ranks, rank 0 alone writing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import _sharding_data as sd
import numpy as np
import pytest
import torch

from scibench_data.cli import main

REPO = Path(__file__).resolve().parents[2]
UNO = ["--width", "16", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def root(cloudmask_stores, tmp_path_factory) -> str:
    """STEMDL (``stemdl``) and UNO (``candle_uno``) entries under one catalog root."""
    return sd.build_stores(tmp_path_factory.mktemp("resume"), cloudmask_stores["hdf"])["uno_root"]


def _env() -> dict[str, str]:
    """A child's environment that trains with this process's torch thread count. Float sums depend on
    it, so a part trained with another count is not bit-identical, and this process's environment
    may say otherwise: distributed's own ``LocalCluster`` (an earlier test's) leaves its
    ``OMP_NUM_THREADS=1`` in ``os.environ`` after torch read it here."""
    n = str(torch.get_num_threads())
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cloudmask_resume_after_a_stop_mid_epoch_trains_the_same_model(cloudmask_training_root, tmp_path):
    args = ["train", "cloudmask", "--root", str(cloudmask_training_root), "--mode", "random", "--patch", "64",
            "--patches-per-scene", "4", "--batch-size", "4", "--epochs", "2", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    stop = int(np.random.default_rng().integers(1, 10))  # 2 epochs of 5 batches
    assert main([*args, "--out", str(tmp_path / "cut"), "--max-steps", str(stop), "--checkpoint-every", "1"]) == 0
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["loader"]
    assert (state["epoch"], state["batches_yielded"]) == divmod(stop, 5) or stop == 5
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert _same(_weights(tmp_path / "whole" / "model.pt"), _weights(tmp_path / "cut" / "model.pt")), stop
    assert (tmp_path / "cut" / "train-mllog.resume-1.txt").is_file()  # the first part's log is kept


@pytest.mark.slow
def test_stemdl_resume_after_a_stop_mid_epoch_trains_the_same_model(root, tmp_path):
    args = ["train", "stemdl", "--root", root, "--arch", "resnet-small", "--epochs", "2", "--batch-size", "4",
            "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    n = len(sd.dataset("stemdl", {"stemdl": str(Path(root) / "stemdl.zarr")}))
    per_epoch = -(-n // 4)
    stop = int(np.random.default_rng().integers(1, 2 * per_epoch))
    assert main([*args, "--out", str(tmp_path / "cut"), "--max-steps", str(stop), "--checkpoint-every", "1"]) == 0
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    whole, cut = (_weights(tmp_path / d / "model-classification.pt") for d in ("whole", "cut"))
    assert _same(whole, cut), stop


def test_resume_without_a_checkpoint_names_the_missing_file(root, tmp_path, capsys):
    assert main(["train", "uno", "--root", root, "--out", str(tmp_path), "--resume", *UNO]) == 2
    assert f"{tmp_path / 'checkpoint.pt'}: no checkpoint" in capsys.readouterr().err
    assert main(["train", "uno", "--root", root, "--resume", *UNO]) == 2  # which run? --out is required


@pytest.mark.slow
def test_uno_resume_after_a_kill_at_a_random_moment_trains_the_same_model(root, tmp_path):
    args = ["train", "uno", "--root", root, "--epochs", "40", "--patience", "40", *UNO]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "scibench_data.cli", *args, "--out", str(cut), "--checkpoint-every", "1"]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (cut / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(float(np.random.default_rng().uniform(0, 0.5)))
        os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert returncode == -9, (tmp_path / "killed.log").read_text()[-2000:]  # killed mid-run
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert 1 <= state["progress"]["steps"]
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert _same(_weights(tmp_path / "whole" / "uno_model.pt"), _weights(cut / "uno_model.pt"))
    whole_history = json.loads((tmp_path / "whole" / "train_history.json").read_text())
    assert json.loads((cut / "train_history.json").read_text()) == whole_history, state["progress"]["steps"]


def test_only_rank_zero_writes_logs_and_checkpoints(monkeypatch, tmp_path):
    from reference_models.training import TrainingProgress, save_checkpoint
    from scibench_data.pipelines import training_log

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with training_log(tmp_path / "mllog.txt", "candle_uno") as log:
        assert log is None
    model = torch.nn.Linear(2, 1)
    assert save_checkpoint(tmp_path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loader=None, progress=TrainingProgress()) is None
    assert list(tmp_path.iterdir()) == []


class _Loader:
    """The two methods a checkpoint needs of a loader, at the start of an epoch."""

    def state_dict(self) -> dict:
        return {"epoch": 0, "batches_yielded": 0, "batches_in_epoch": 1}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_a_resume_with_another_torch_thread_count_says_it_will_not_be_bit_identical(tmp_path):
    """A killed run's first part trained with 1 thread (an earlier test's LocalCluster had left
    OMP_NUM_THREADS=1 in the environment its child inherited), its resume with 2: the model differed
    from the uninterrupted run's in the last bits, and nothing said why."""
    from reference_models.training import (
        TrainingProgress,
        load_checkpoint,
        save_checkpoint,
    )

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    was = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        save_checkpoint(tmp_path, model=model, optimizer=opt, loader=_Loader(), progress=TrainingProgress())
        torch.set_num_threads(2)
        with pytest.warns(RuntimeWarning, match=r"1 torch thread\(s\), resumed with 2.*OMP_NUM_THREADS=1"):
            load_checkpoint(tmp_path, model=model, optimizer=opt, loader=_Loader(), progress=TrainingProgress())
        torch.set_num_threads(1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the same count: no warning
            load_checkpoint(tmp_path, model=model, optimizer=opt, loader=_Loader(), progress=TrainingProgress())
    finally:
        torch.set_num_threads(was)


def test_a_checkpoint_whose_thread_count_is_not_a_number_still_resumes(tmp_path):
    """Someone else's checkpoint may hold anything there: it is not a reason to fail or to warn."""
    from reference_models.training import (
        CHECKPOINT,
        TrainingProgress,
        load_checkpoint,
        save_checkpoint,
    )

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path, model=model, optimizer=opt, loader=_Loader(), progress=TrainingProgress())
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    torch.save({**state, "threads": "many"}, tmp_path / CHECKPOINT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_checkpoint(tmp_path, model=model, optimizer=opt, loader=_Loader(),
                               progress=TrainingProgress()) == (0, {})


@pytest.mark.slow
def test_torchrun_trains_uno_on_two_gloo_ranks_and_rank_zero_writes(root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "scibench_data.cli", "train", "uno", "--root", root, "--epochs", "2", "--out", str(out), *UNO]
    run = subprocess.run(cmd, env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    events = [json.loads(line.split(":::MLLOG ", 1)[1]) for line in (out / "train-mllog.txt").read_text().splitlines()
              if ":::MLLOG" in line]
    assert [e["key"] for e in events].count("eval_accuracy") == 2  # one rank logged the two epochs
    assert next(e["value"] for e in events if e["key"] == "global_batch_size") == 32  # 2 ranks x 16
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    n = len(sd.dataset("uno", {"uno_root": root}))
    assert state["loader"]["world_size"] == 2 and state["loader"]["batches_in_epoch"] == -(-(-(-n // 2)) // 16)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "train-mllog.txt", "train_history.json",
                                                      "uno_model.pt"]


class _FinishedEpochLoader:
    """A loader state after the last batch of epoch 4 (what ResumableLoader.state_dict() says then)."""

    def state_dict(self) -> dict:
        return {"epoch": 4, "batches_yielded": 7, "batches_in_epoch": 7}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def test_a_checkpoint_of_an_epochs_last_step_resumes_into_that_epochs_end(tmp_path):
    """A kill between the last step's checkpoint and the epoch's end (validation, history, early
    stopping) resumed at the next epoch: that epoch's history entry was lost (UNO, 2 of 4 runs)."""
    from reference_models.training import Checkpoints, TrainingProgress

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoints = Checkpoints(tmp_path, model, opt, _FinishedEpochLoader(), TrainingProgress(), every=1)
    checkpoints.after_step()  # the last step's checkpoint: the epoch's end has not run yet
    assert checkpoints.resume()[0] == 4
    checkpoints.save(epoch_done=True)
    assert checkpoints.resume()[0] == 5
