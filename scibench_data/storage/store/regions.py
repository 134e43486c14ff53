"""Pure chunk and region arithmetic.

Writing a region that does not line up with the Zarr chunk grid is a known
silent-corruption trap: two writers that share a chunk each read-modify-write
it and one loses. Every parallel write in this package goes through
:func:`check_region_aligned`, so a misaligned write raises before any byte is
written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


class MisalignedRegionError(ValueError):
    """A region would write part of a chunk that another writer may own."""


@dataclass(frozen=True)
class Region:
    """A hyper-rectangle ``[start, stop)`` per dimension."""

    starts: tuple[int, ...]
    stops: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.starts) != len(self.stops):
            raise ValueError(f"region has {len(self.starts)} starts but {len(self.stops)} stops")
        for axis, (a, b) in enumerate(zip(self.starts, self.stops)):
            if a < 0 or b < a:
                raise ValueError(f"region axis {axis}: bad bounds [{a}, {b})")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.starts, self.stops))

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.starts, self.stops))


def check_region_aligned(
    region: Region, chunks: Sequence[int], shape: Sequence[int], name: str = "array"
) -> None:
    """Raise :class:`MisalignedRegionError` unless every face of ``region`` is on a
    chunk boundary (or on the array's edge)."""
    if not (len(region.starts) == len(chunks) == len(shape)):
        raise ValueError(
            f"{name}: region has {len(region.starts)} dims, chunks {len(chunks)}, shape {len(shape)}"
        )
    for axis, (a, b, c, n) in enumerate(zip(region.starts, region.stops, chunks, shape)):
        if b > n:
            raise MisalignedRegionError(f"{name}: region [{a}, {b}) exceeds axis {axis} of length {n}")
        if a % c != 0:
            raise MisalignedRegionError(
                f"{name}: region start {a} on axis {axis} is not a multiple of the chunk size {c}"
            )
        if b % c != 0 and b != n:
            raise MisalignedRegionError(
                f"{name}: region stop {b} on axis {axis} is neither a multiple of the chunk size {c} "
                f"nor the end of the axis ({n})"
            )


def chunk_slices(length: int, chunk: int) -> list[slice]:
    """The chunk boundaries of one axis, as slices."""
    if chunk <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk}")
    return [slice(i, min(i + chunk, length)) for i in range(0, length, chunk)]


def chunks_touched(start: int, stop: int, chunk: int) -> range:
    """Indices of the chunks of size ``chunk`` that ``[start, stop)`` overlaps."""
    if stop <= start:
        return range(0)
    return range(start // chunk, (stop - 1) // chunk + 1)


def n_chunks_touched(region: Region, chunks: Sequence[int]) -> int:
    """How many chunks a read of ``region`` decodes."""
    return math.prod(len(chunks_touched(a, b, c)) for a, b, c in zip(region.starts, region.stops, chunks))
