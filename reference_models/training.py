"""The inner training loop every reference pipeline shares: one epoch of optimiser steps."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from scibench_data.progress import bar_disable


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
) -> bool:
    """One pass over ``loader``: zero grad, loss, backward, step per batch, with a progress bar.

    ``loss_of_batch(batch)`` returns the loss tensor and the number of samples in the batch.
    Returns True when ``max_steps`` (counted across epochs) stopped the pass early.
    """
    model.train()
    t0 = time.perf_counter()
    try:  # the bar's total: the batches this pass will really run (the step cap included)
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_steps and total is not None:
        total = max(0, min(total, max_steps - progress.steps))
    bar = tqdm(loader, total=total, desc=desc, unit="batch", disable=bar_disable(show), dynamic_ncols=True)
    stopped = False
    for batch in bar:
        if max_steps and progress.steps >= max_steps:  # checked here, so the bar has counted the last step
            stopped = True
            break
        optimizer.zero_grad()
        loss, n = loss_of_batch(batch)
        loss.backward()
        optimizer.step()
        progress.losses.append(loss.item())
        progress.samples += n
        progress.steps += 1
        bar.set_postfix(loss=f"{progress.losses[-1]:.4f}")
    bar.close()
    progress.seconds += time.perf_counter() - t0
    return stopped
