"""Converters: raw benchmark files -> one chunked Zarr store each (one module per data set)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from scibench_data.storage.store.encoding import DEFAULT_CODEC, CodecChoice

#: Root attribute naming the generator of a store's synthetic sources (absent for real data).
SYNTHETIC_ATTR = "scibench_synthetic"


@dataclass(frozen=True, kw_only=True)
class ConversionRun:
    """How any conversion runs (every data set's options extend this): output codec, scheduler
    (``"threads"``, ``"sync"``, ``"local-cluster"`` or a dask scheduler address), workers,
    retries of a failing task, progress bars, and whether the sources are synthetic (the generator's
    name, recorded in the finished store's root as :data:`SYNTHETIC_ATTR`, part of its manifest).
    Keyword-only, after each data set's own fields."""

    codec: CodecChoice = DEFAULT_CODEC
    scheduler: str = "threads"
    n_workers: int | None = None
    retries: int = 1
    progress: bool = True
    synthetic: str | None = None

    def with_synthetic(self, generator: str | None):
        """These options, marked synthetic by ``generator`` (a marker found beside the sources) unless
        they already say what the sources are."""
        return self if self.synthetic or not generator else replace(self, synthetic=generator)

    def store_attrs(self) -> dict[str, str]:
        """Root attributes every finished store of this run gets."""
        return {SYNTHETIC_ATTR: self.synthetic} if self.synthetic else {}


def plan_layout(codec: CodecChoice, encoding: Mapping[str, dict]) -> dict:
    """How the bytes of a store are laid out, as its plan records it: the codec and the chunks of
    every array. A resume with other options then differs from the plan and is refused."""
    return {"codec": asdict(codec),
            "chunks": {name: list(e["chunks"]) for name, e in sorted(encoding.items()) if "chunks" in e}}


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion did; ``ok`` is False if anything was skipped or failed."""

    dest: str
    total: int
    converted: tuple[str, ...] = ()
    already_done: int = 0
    failed: tuple[tuple[str, str], ...] = ()  # (source, error)
    rejected: tuple[tuple[str, str], ...] = ()  # (path, reason): not a valid source name
    complete: bool = False
    elapsed_s: float = 0.0
    bytes_read: int = 0
    extra: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # facts a user must know about the result (e.g. a split the source lacks)

    @property
    def ok(self) -> bool:
        return self.complete and not self.failed and not self.rejected

    def lines(self) -> list[str]:
        rate = self.bytes_read / self.elapsed_s / 1e6 if self.elapsed_s > 0 else 0.0
        out = [
            f"destination: {self.dest}",
            f"records: {self.total} planned, {len(self.converted)} converted now, {self.already_done} already done",
            f"read {self.bytes_read / 1e6:.1f} MB in {self.elapsed_s:.1f} s ({rate:.1f} MB/s)",
            f"status: {'complete' if self.complete else 'INCOMPLETE (rerun the same command to resume)'}",
        ]
        out += [f"note: {n}" for n in self.notes]
        if "appended" in self.extra:  # an append (either command): what it added, replaced and skipped
            out.append(f"appended: {len(self.extra['appended'])} product(s), replaced by a reprocessed version: "
                       f"{len(self.extra.get('replaced', []))}, older versions skipped: "
                       f"{len(self.extra.get('superseded', []))}")
        elif self.extra.get("superseded"):  # a conversion: the older versions of an acquisition it left out
            names = self.extra["superseded"]
            out.append(f"superseded: {len(names)} older version(s) of a product also present in a newer "
                       f"processing, not stored (e.g. {names[0]})")
        for path, reason in self.rejected:
            out.append(f"skipped {path}: {reason}")
        for src, err in self.failed:
            out.append(f"failed {src}: {err}")
        return out

    def as_dict(self) -> dict:
        return {"dest": self.dest, "total": self.total, "converted": list(self.converted),
                "already_done": self.already_done, "failed": [list(f) for f in self.failed],
                "rejected": [list(r) for r in self.rejected], "complete": self.complete,
                "elapsed_s": self.elapsed_s, "bytes_read": self.bytes_read, "notes": list(self.notes), **self.extra}
