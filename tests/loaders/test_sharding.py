"""Rank-sharded, deterministic, resumable streaming (issue 16), for CloudMask, STEMDL and UNO:
exactly-once coverage per epoch, one global order for any ranks x workers, exact resume after a
kill, torchdata's StatefulDataLoader, 2 gloo ranks x 2 workers and one DDP step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import _sharding_data as sd
import numpy as np
import pytest
import torch

from loaders.sharding import (
    ShardSpec,
    distributed_rank,
    epoch_order,
    rank_share,
    share_size,
    worker_batches,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stores(cloudmask_stores, tmp_path_factory) -> dict[str, str]:
    return sd.build_stores(tmp_path_factory.mktemp("sharding"), cloudmask_stores["hdf"])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


# ------------------------------------------------------------------------------- pure arithmetic


def test_epoch_order_depends_on_seed_and_epoch_only_and_keeps_blocks_together():
    blocks = np.repeat([7, 3, 5, 1], 5)
    a = epoch_order(blocks, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(20))
    assert np.array_equal(a, epoch_order(blocks, seed=1, epoch=0))
    assert not np.array_equal(a, epoch_order(blocks, seed=1, epoch=1))
    assert not np.array_equal(a, epoch_order(blocks, seed=2, epoch=0))
    runs = blocks[a]
    assert sum(runs[1:] != runs[:-1]) == 3  # each block's items contiguous
    mixed = blocks[epoch_order(blocks, seed=1, epoch=0, mix=2)]
    assert len(set(mixed[:10].tolist())) == 2  # two blocks shuffled together
    assert np.array_equal(epoch_order(blocks, seed=1, epoch=0, shuffle=False), np.arange(20))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_shares_concatenate_to_the_order_and_are_equal(n, world):
    order = np.random.default_rng(n).permutation(n)
    pad = [rank_share(order, r, world, "pad") for r in range(world)]
    drop = [rank_share(order, r, world, "drop") for r in range(world)]
    assert len({len(s) for s in pad}) == 1 and len({len(s) for s in drop}) == 1  # equal batch counts
    assert len(pad[0]) == share_size(n, world, "pad")
    padded = np.concatenate(pad)
    assert np.array_equal(padded[:n], order) and set(padded[n:].tolist()) <= set(order.tolist())
    assert np.array_equal(np.concatenate(drop), order[:n - n % world])  # each at most once


def test_worker_batches_split_a_rank_round_robin_from_any_start():
    for start in (0, 3):
        got = sorted(b for w in range(3) for b in worker_batches(10, start, w, 3))
        assert got == list(range(start, 10))


def test_rank_and_world_size_come_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed_rank() == (1, 3)
    assert distributed_rank(0, 2) == (0, 2)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed_rank() == (0, 1)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        distributed_rank(2, 2)
    with pytest.raises(ValueError, match="remainder"):
        ShardSpec(4, remainder="wrap")


def test_scene_blocks_cut_the_chunks_each_batch_reads(stores):
    """Locality, measured: chunks per batch with scenes shuffled as blocks vs all patches shuffled."""
    from loaders.chunk_reader import window_pieces

    data = sd.dataset("cloudmask_random", stores)
    chunks = data.handle["image"].chunks

    def chunks_per_batch(mix: int) -> float:
        spec = ShardSpec(4, seed=3, mix=mix)
        per = []
        for batch in spec.batches(data.blocks(), 0):
            touched = set()
            for scene, win in (data.items[i] for i in batch):
                touched |= {p.chunk for p in window_pieces((slice(scene, scene + 1), slice(0, 9), *win.slices), chunks)}
            per.append(len(touched))
        return float(np.mean(per))

    assert chunks_per_batch(1) < chunks_per_batch(len(data.scenes))


# ------------------------------------------------------------------ the three benchmarks' loaders


@pytest.mark.slow
@pytest.mark.parametrize("bench", sd.BENCHMARKS)
def test_every_item_once_in_the_same_order_for_any_ranks_and_workers(stores, bench):
    n = len(sd.dataset(bench, stores))
    orders = {}
    for world, workers in ((1, 1), (1, 2), (2, 1), (2, 2)):
        ids, counts = [], []
        for rank in range(world):
            loader = sd.loader(bench, stores, num_workers=workers if workers > 1 else 0, rank=rank,
                               world_size=world, remainder="drop")
            batches = list(loader)
            counts.append(len(batches))
            assert len(batches) == len(loader)
            ids += sd.item_ids(bench, stores, batches)
        assert len(set(counts)) == 1, counts  # DDP ranks get equal batch counts
        assert len(ids) == len(set(ids)) == n - n % world  # each item at most once; only the remainder dropped
        orders[(world, workers)] = ids
    full = orders[(1, 1)]
    assert sorted(full) == list(range(n))  # exactly once
    for key, ids in orders.items():
        assert ids == full[:len(ids)], key  # one global order: the concatenation over ranks
    # padding: every item at least once, the extra ones repeat the order's start
    padded = [i for r in range(2) for i in sd.item_ids(bench, stores, sd.loader(bench, stores, rank=r,
                                                                                      world_size=2))]
    assert padded == full + full[:n % 2]
    # another epoch: another order of the same items
    loader = sd.loader(bench, stores)
    loader.set_epoch(1)
    assert sorted(ids := sd.item_ids(bench, stores, loader, epoch=1)) == list(range(n)) and ids != full


_KILLED = """
import json, os, signal, sys
import _sharding_data as sd

if __name__ == "__main__":
    stores, benchmark, kill_at, out = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    loader = sd.loader(benchmark, stores, num_workers=2, rank=1, world_size=2)
    loader.set_epoch(2)
    seen = []
    for k, batch in enumerate(loader):
        seen += sd.item_ids(benchmark, stores, [batch], epoch=2)
        with open(out, "w") as f:  # what a checkpoint holds: the loader state after this batch
            json.dump({"state": loader.state_dict(), "seen": seen}, f)
        if k + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
@pytest.mark.parametrize("bench", ["cloudmask_fixed", "stemdl", "uno"])
def test_resume_after_a_kill_at_a_random_batch_yields_the_rest_once_in_order(stores, bench, tmp_path):
    whole = sd.loader(bench, stores, rank=1, world_size=2)
    whole.set_epoch(2)
    expected = sd.item_ids(bench, stores, whole, epoch=2)
    kill_at = int(np.random.default_rng().integers(1, len(whole)))  # a random batch, never the last
    script, out = tmp_path / "killed.py", tmp_path / "state.json"
    script.write_text(_KILLED)
    log = tmp_path / "killed.log"
    with open(log, "w") as f:  # its own session: the worker processes it leaves are ended with it below
        proc = subprocess.Popen([sys.executable, str(script), json.dumps(stores), bench, str(kill_at), str(out)],
                                env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        returncode = proc.wait(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # forkserver workers outlive a killed parent
        except ProcessLookupError:
            pass
    assert returncode == -9, log.read_text()[-2000:]  # SIGKILL, mid-epoch
    saved = json.loads(out.read_text())
    assert saved["state"]["batches_yielded"] == kill_at
    resumed = sd.loader(bench, stores, num_workers=2, rank=1, world_size=2)
    resumed.load_state_dict(saved["state"])
    rest = sd.item_ids(bench, stores, resumed, epoch=2)
    assert saved["seen"] + rest == expected, f"killed after batch {kill_at}"
    assert resumed.finished and resumed.state_dict()["batches_yielded"] == len(whole)
    assert sd.item_ids(bench, stores, resumed, epoch=2) == expected  # the next pass is a whole epoch again


def test_a_state_from_another_world_size_is_refused(stores):
    state = sd.loader("uno", stores, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size=2"):
        sd.loader("uno", stores, rank=0, world_size=1).load_state_dict(state)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")
@pytest.mark.parametrize("bench", ["cloudmask_random", "stemdl", "uno"])
def test_torchdata_stateful_dataloader_resumes_our_stream(stores, bench):
    from torchdata.stateful_dataloader import StatefulDataLoader

    from loaders.workers import worker_context

    def make():
        stream = sd.loader(bench, stores, rank=0, world_size=2).dataset
        stream.set_epoch(1)
        return StatefulDataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context=worker_context())

    expected = sd.item_ids(bench, stores, make(), epoch=1)
    first = make()
    it = iter(first)
    head = [next(it) for _ in range(max(1, len(first.dataset) // 2))]  # stop half-way
    state = first.state_dict()
    del it, first
    again = make()
    again.load_state_dict(state)
    assert sd.item_ids(bench, stores, head, epoch=1) + sd.item_ids(bench, stores, again, epoch=1) == expected


# ------------------------------------------------------------------------- two gloo ranks, DDP


def _rank_main(rank: int, world: int, stores: dict, init: str, out: str) -> None:
    import torch.distributed as dist

    from reference_models.training import data_parallel
    from reference_models.uno import UnoModel, UnoModelConfig

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = {}
        for benchmark in sd.BENCHMARKS:  # rank and world size from torch.distributed
            loader = sd.loader(benchmark, stores, num_workers=2)
            result[benchmark] = sd.item_ids(benchmark, stores, loader)
        torch.manual_seed(0)
        model = UnoModel(UnoModelConfig(n_genes=8, n_descriptors=6, tower=(8,), dense=(8,), dropout=0.0))
        ddp = data_parallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        batch = next(iter(sd.loader("uno", stores, seed=1)))
        loss = torch.nn.functional.mse_loss(ddp(batch["cell"], batch["drug"]), batch["auc"])
        loss.backward()
        opt.step()
        torch.save({"ids": result, "params": [p.detach() for p in model.parameters()]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_with_two_workers_each_and_one_ddp_step(stores, tmp_path):
    import torch.multiprocessing as mp

    from reference_models.uno import UnoModel, UnoModelConfig

    mp.spawn(_rank_main, args=(2, stores, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for benchmark in sd.BENCHMARKS:
        one = sd.item_ids(benchmark, stores, sd.loader(benchmark, stores, rank=0, world_size=1))
        got = ranks[0]["ids"][benchmark] + ranks[1]["ids"][benchmark]
        assert got[:len(one)] == one and set(got) == set(range(len(one))), benchmark  # once each (+ padding)
        assert len(ranks[0]["ids"][benchmark]) == len(ranks[1]["ids"][benchmark])
    # the DDP step equals one step on both ranks' batches together (gradients averaged)
    torch.manual_seed(0)
    model = UnoModel(UnoModelConfig(n_genes=8, n_descriptors=6, tower=(8,), dense=(8,), dropout=0.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = 0
    for r in range(2):
        b = next(iter(sd.loader("uno", stores, seed=1, rank=r, world_size=2)))
        loss = loss + torch.nn.functional.mse_loss(model(b["cell"], b["drug"]), b["auc"]) / 2
    loss.backward()
    opt.step()
    for p, p0, p1 in zip(model.parameters(), ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(p0, p1)
        torch.testing.assert_close(p0, p.detach())
