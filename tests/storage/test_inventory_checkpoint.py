"""The coordinator's inventory checkpoints (``records.InventoryCheckpoint``) over a long run."""

from __future__ import annotations

from pathlib import Path

from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.records import (
    CHECKPOINT_EVERY,
    INVENTORY_KEY,
    InventoryCheckpoint,
    RecordStore,
)

N = 9800  # DS2's scenes


def _run(tmp_path: Path, known: int = 0) -> tuple[list[int], list[int], int]:
    """Add N - known markers one by one (as tasks finish); (inventory sizes at each rewrite, markers
    added since the last rewrite at each add, final inventory size)."""
    store = RecordStore(StoreLocation(str(tmp_path / "s.zarr")), "record")
    marker = {"key": "", "sha256": "0" * 64, "bytes": 1}
    checkpoint = InventoryCheckpoint(store, {i: {**marker, "key": f"p{i}"} for i in range(known)})
    path = tmp_path / "s.zarr" / Path(*INVENTORY_KEY)
    rewrites, unsaved, since, size = [], [], 0, -1
    for i in range(known, N):
        checkpoint.add(i, {**marker, "key": f"p{i}"})
        since += 1
        now = path.stat().st_size if path.exists() else -1
        if now != size:  # the inventory only grows: each rewrite changes its size
            rewrites.append(now)
            size, since = now, 0
        unsaved.append(since)
    checkpoint.flush()
    return rewrites, unsaved, path.stat().st_size


def test_a_long_run_rewrites_its_inventory_a_bounded_number_of_bytes(tmp_path):
    """The coordinator rewrote the whole inventory every 256 finished products: over a 9,800-product
    DS2 run that is 39 rewrites, 20x the final inventory (0.67 GB of JSON for full-size products),
    each one serialised (0.41 s at the end) and uploaded while the coordinator handed no finished
    worker its next product. The rewrites must add up to a small multiple of the final inventory."""
    rewrites, _, final = _run(tmp_path)
    assert sum(rewrites) + final <= 5 * final, (len(rewrites), sum(rewrites) / final)


def test_a_kill_loses_at_most_a_quarter_of_the_markers_from_the_inventory(tmp_path):
    """What the rewrites save costs a resume after a kill: the markers written since the last rewrite
    are read one by one. At most CHECKPOINT_EVERY of them, or a quarter of those the inventory holds."""
    _, unsaved, _ = _run(tmp_path)
    held = [i + 1 for i in range(N)]
    assert all(u < max(CHECKPOINT_EVERY, h // 4 + 1) for u, h in zip(unsaved, held)), max(unsaved)
    assert max(unsaved[:CHECKPOINT_EVERY * 2]) < CHECKPOINT_EVERY  # early on, as before: every 256


def test_the_markers_known_at_the_start_count_towards_the_next_rewrite_size(tmp_path):
    """A resume that starts with 8,000 markers known rewrote all of them with every 256 products it
    finished (7 times for the last 1,800); the markers it starts with count in the rewrite interval."""
    rewrites, _, _ = _run(tmp_path, known=8000)
    assert len(rewrites) <= 2, len(rewrites)
