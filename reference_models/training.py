"""What every reference pipeline's training shares: one epoch of optimiser steps, data-parallel
set-up (``torchrun``: gloo on CPU, NCCL on GPUs), and checkpoints that resume mid-epoch."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from scibench_data.progress import bar_disable

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainingProgress:
    """Running totals across epochs."""

    losses: list[float] = field(default_factory=list)
    samples: int = 0
    steps: int = 0
    seconds: float = 0.0

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def run_epoch(
    model: torch.nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    loss_of_batch: Callable[[Any], tuple[torch.Tensor, int]],
    progress: TrainingProgress,
    *,
    max_steps: int | None = None,
    desc: str = "train",
    show: bool = True,
    after_step: Callable[[], None] | None = None,
) -> bool:
    """One pass over ``loader``: zero grad, loss, backward, step per batch, with a progress bar.

    ``loss_of_batch(batch)`` returns the loss tensor and the number of samples in the batch.
    Returns True when ``max_steps`` (counted across epochs) stopped the pass early.
    ``after_step()`` runs after every step (a pipeline saves its checkpoint there).
    """
    model.train()
    t0 = time.perf_counter()
    try:  # the bar's total: the batches this pass will really run (the step cap included)
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_steps and total is not None:
        total = max(0, min(total, max_steps - progress.steps))
    bar = tqdm(total=total, desc=desc, unit="batch", disable=bar_disable(show), dynamic_ncols=True)
    stopped = False
    for batch in loader:
        optimizer.zero_grad()
        loss, n = loss_of_batch(batch)
        loss.backward()
        optimizer.step()
        progress.losses.append(loss.item())
        progress.samples += n
        progress.steps += 1
        bar.set_postfix(loss=f"{progress.losses[-1]:.4f}", refresh=False)
        bar.update(1)  # counted once the step is done: a step cap ends the bar at its total
        if after_step is not None:
            after_step()
        if max_steps and progress.steps >= max_steps:
            stopped = True
            break
    bar.close()
    progress.seconds += time.perf_counter() - t0
    return stopped


def init_distributed() -> tuple[int, int]:
    """``(rank, world_size)``; under ``torchrun`` (``WORLD_SIZE`` > 1) the default process group is
    initialised first if it is not yet: gloo on CPU, NCCL when CUDA is available."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), world


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one process that writes logs, scores and checkpoints."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` when several ranks train, else itself."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return torch.nn.parallel.DistributedDataParallel(model)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (what is saved and evaluated)."""
    return getattr(model, "module", model)


def save_checkpoint(outdir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loader: Any, progress: TrainingProgress, extra: dict | None = None,
                    epoch_done: bool = False) -> Path | None:
    """Write ``outdir/checkpoint.pt`` (model, optimiser, loader state, progress, torch's RNG state
    and thread count) atomically, on rank 0 only. ``epoch_done``: the epoch's own end (evaluation, early stopping,
    history) is done too, so a resume starts the next epoch; otherwise it re-enters this one, even
    when the loader has delivered all of its batches.

    Every rank's loader is at the same batch of the same epoch, so rank 0's loader state
    resumes every rank. Returns the path written, None on other ranks."""
    if not is_main_process():
        return None
    path = Path(outdir) / CHECKPOINT
    tmp = path.with_suffix(".tmp")
    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "loader": loader.state_dict(), "progress": asdict(progress), "rng": torch.get_rng_state(),
                "extra": extra or {}, "epoch_done": bool(epoch_done), "threads": torch.get_num_threads()}, tmp)
    os.replace(tmp, path)  # a kill while writing leaves the previous checkpoint intact
    return path


def load_checkpoint(outdir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loader: Any, progress: TrainingProgress) -> tuple[int, dict]:
    """Restore what :func:`save_checkpoint` wrote into ``model``, ``optimizer``, ``loader``,
    ``progress`` and torch's RNG; returns the epoch to continue with (the saved one if it was cut
    short, else the next) and the checkpoint's ``extra``. ``FileNotFoundError`` naming the path
    if there is none; a ``RuntimeWarning`` when this process has another torch thread count than
    the run that wrote it (the continuation is then not bit-identical)."""
    path = Path(outdir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from (train without --resume first)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    loader.load_state_dict(ckpt["loader"])
    for key, value in ckpt["progress"].items():
        setattr(progress, key, value)
    torch.set_rng_state(ckpt["rng"])
    threads, now = ckpt.get("threads"), torch.get_num_threads()
    if type(threads) is int and threads != now:  # a checkpoint without it (older) or with junk: nothing to say
        warnings.warn(f"{path}: written by a run with {threads} torch thread(s), resumed with {now}: float sums "
                      "depend on the thread count, so the result will differ slightly from an uninterrupted run "
                      f"(set OMP_NUM_THREADS={threads} to continue it exactly)", RuntimeWarning, stacklevel=2)
    state = ckpt["loader"]
    # a checkpoint of the epoch's last step, saved before the epoch's end ran, re-enters the epoch:
    # its loader yields nothing more and the end (evaluation, history) runs once
    done = ckpt.get("epoch_done", state["batches_yielded"] >= state["batches_in_epoch"])
    return int(state["epoch"]) + (1 if done else 0), ckpt["extra"]


@dataclass
class Checkpoints:
    """A training run's ``checkpoint.pt`` in ``outdir``: saved every ``every`` steps (0: only when
    :meth:`save` is called, e.g. at the end of each epoch) and loaded by :meth:`resume`.
    ``extra()`` adds the pipeline's own state (best score so far, ...)."""

    outdir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Any
    progress: TrainingProgress
    every: int = 0
    extra: Callable[[], dict] | None = None

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"checkpoint interval must be >= 0 steps, got {self.every}")

    def save(self, epoch_done: bool = False) -> Path | None:
        """Save now; ``epoch_done`` once the epoch's end (evaluation, history...) has run."""
        return save_checkpoint(self.outdir, model=self.model, optimizer=self.optimizer, loader=self.loader,
                               progress=self.progress, extra=self.extra() if self.extra else None,
                               epoch_done=epoch_done)

    def after_step(self) -> None:
        """For :func:`run_epoch`'s ``after_step``."""
        if self.every and self.progress.steps % self.every == 0:
            self.save()

    def resume(self) -> tuple[int, dict]:
        """Load the last checkpoint: ``(epoch to continue with, extra)``."""
        return load_checkpoint(self.outdir, model=self.model, optimizer=self.optimizer, loader=self.loader,
                               progress=self.progress)
