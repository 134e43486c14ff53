"""Codec and chunk defaults for every store we write.

One place decides how bytes are laid out, so the benchmarks in
``benchmarks/codecs.py`` measure exactly what the converters use.
"""

from __future__ import annotations

from dataclasses import dataclass

from zarr.codecs import BloscCodec, BloscShuffle


@dataclass(frozen=True)
class CodecChoice:
    """A Blosc configuration (the default compressor of every array we write)."""

    cname: str = "zstd"
    clevel: int = 3
    shuffle: str = "shuffle"  # "shuffle", "bitshuffle" or "noshuffle"

    def __post_init__(self) -> None:
        if self.cname not in {"zstd", "lz4", "lz4hc", "zlib", "blosclz"}:
            raise ValueError(f"unknown blosc codec {self.cname!r}")
        if not 0 <= self.clevel <= 9:
            raise ValueError(f"blosc level must be 0..9, got {self.clevel}")
        if self.shuffle not in {"shuffle", "bitshuffle", "noshuffle"}:
            raise ValueError(f"unknown shuffle {self.shuffle!r}")

    def compressor(self, typesize: int) -> BloscCodec:
        return BloscCodec(
            cname=self.cname, clevel=self.clevel, shuffle=BloscShuffle[self.shuffle], typesize=typesize
        )


#: Blosc zstd level 3 with byte shuffle. Measured here (``stack-notes.md`` and
#: ``python benchmarks/codecs.py``): ratio 1.35 on radiance-like float32 with
#: 1.7-2.8 GB/s decode per core, against netCDF-style zlib4 at ratio 1.44 but
#: ~320 MB/s decode: decode speed is what a patch stream pays for.
DEFAULT_CODEC = CodecChoice()


def encoding_for(dtype_itemsize: int, chunks: tuple[int, ...], codec: CodecChoice = DEFAULT_CODEC) -> dict:
    """An xarray ``to_zarr`` encoding entry for one zarr-format-3 variable."""
    return {"chunks": chunks, "compressors": (codec.compressor(dtype_itemsize),)}
