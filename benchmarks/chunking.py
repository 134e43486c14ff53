"""Codec and chunk-layout choice for CloudMask stores (issue 8, item 5).

Writes the same full-size synthetic scenes (1200 x 1500, 9 channels, float32)
with each candidate codec and chunk layout, then measures, side by side in one
run: compression ratio, decode speed of whole chunks, and random 256 x 256
patch reads (objects touched per patch, bytes read per patch byte, patches/s).

    python benchmarks/chunking.py [--scenes 4] [--patches 200] [--out benchmarks/results/chunking.json]
    python benchmarks/chunking.py --codecs "lz4+shuffle,lz4+shuffle+crc32c" --no-layouts   # checksum cost

Encode speed includes zarr's write path; codec decode is the bare codec over
every chunk object in memory; patch reads go through zarr from local disk.
Timings are the best of three passes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec

from scibench_data.storage.store.integrity import checked_payload
from scibench_data.synthetic.cloudmask import SyntheticCloudMask, draw_truth


@dataclass(frozen=True)
class Layout:
    name: str
    tile: int
    channels_inside: bool
    shard: bool = False


def codecs():
    blosc = lambda c, l, s: BloscCodec(cname=c, clevel=l, shuffle=BloscShuffle[s], typesize=4)
    return {
        "zstd1+shuffle": [blosc("zstd", 1, "shuffle")],
        "zstd3+shuffle": [blosc("zstd", 3, "shuffle")],
        "zstd5+shuffle": [blosc("zstd", 5, "shuffle")],
        "zstd3+bitshuffle": [blosc("zstd", 3, "bitshuffle")],
        "lz4+shuffle": [blosc("lz4", 5, "shuffle")],
        "lz4+shuffle+crc32c": [blosc("lz4", 5, "shuffle"), Crc32cCodec()],  # the default (issue 13)
        "lz4+bitshuffle": [blosc("lz4", 5, "bitshuffle")],
        "zlib4 (netCDF-style)": "zlib",
    }


REPEATS = 3

LAYOUTS = [
    Layout("9ch x 256 (default)", 256, True),
    Layout("9ch x 128", 128, True),
    Layout("9ch x 512", 512, True),
    Layout("1ch x 256", 256, False),
    Layout("9ch x 256, sharded per scene", 256, True, shard=True),
]


def scenes(n: int) -> np.ndarray:
    out = []
    for i in range(n):
        t = draw_truth(np.random.default_rng([5, i]), SyntheticCloudMask().grid)
        out.append(np.concatenate([t.reflectance, t.brightness_temperature]).astype(np.float32))
    return np.stack(out)


def write(path: Path, data: np.ndarray, layout: Layout, codec) -> zarr.Array:
    chunks = (1, 9 if layout.channels_inside else 1, layout.tile, layout.tile)
    kwargs: dict = {}
    if codec == "zlib":
        from zarr.codecs.numcodecs import Shuffle
        from zarr.codecs.numcodecs import Zlib as Z

        kwargs["compressors"] = [Shuffle(elementsize=4), Z(level=4)]  # netCDF4's shuffle + deflate
    else:
        kwargs["compressors"] = codec
    if layout.shard:
        arr = zarr.create_array(str(path), shape=data.shape, dtype="f4", chunks=chunks,
                                shards=(1, 9, -(-data.shape[2] // layout.tile) * layout.tile,
                                        -(-data.shape[3] // layout.tile) * layout.tile), **kwargs)
    else:
        arr = zarr.create_array(str(path), shape=data.shape, dtype="f4", chunks=chunks, **kwargs)
    arr[...] = data
    return arr


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")


def codec_decode_MBps(path: Path, codec, layout: Layout) -> float:
    """Decode every chunk object of the array with the bare codec, bytes already in memory."""
    import numcodecs

    if layout.shard:
        return float("nan")
    blobs = [p.read_bytes() for p in (path / "c").rglob("*") if p.is_file()]
    if codec == "zlib":
        chain = [numcodecs.Zlib(), numcodecs.Shuffle(elementsize=4)]
    elif isinstance(codec[-1], Crc32cCodec):
        chain = [CrcCheck(), numcodecs.Blosc()]  # as loaders/chunk_reader.py: check, then decode in place
    else:
        chain = [numcodecs.Blosc()]
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        total = 0
        for b in blobs:
            for c in chain:
                b = c.decode(b)
            total += len(b)
        best = min(best, time.perf_counter() - t0)
    return total / best / 1e6


class CrcCheck:
    """The crc32c check of the chunk reader, as a decode step: the chunk without its checksum (no copy)."""

    def decode(self, b):
        return checked_payload(np.frombuffer(b, np.uint8), "benchmark chunk")


def measure(path: Path, data: np.ndarray, layout: Layout, n_patches: int, codec) -> dict:
    arr = zarr.open_array(str(path), mode="r")
    rng = np.random.default_rng(0)
    h, w = data.shape[2:]
    windows = [(int(rng.integers(data.shape[0])), int(rng.integers(h - 256 + 1)), int(rng.integers(w - 256 + 1)))
               for _ in range(n_patches)]
    objects = 0
    for _, y, x in windows:
        ny = (y + 255) // layout.tile - y // layout.tile + 1
        nx = (x + 255) // layout.tile - x // layout.tile + 1
        objects += ny * nx * (1 if layout.channels_inside else 9)
    best = float("inf")
    for _ in range(REPEATS):  # best of REPEATS: the machine is shared
        t0 = time.perf_counter()
        for s, y, x in windows:
            arr[s, :, y:y + 256, x:x + 256]
        best = min(best, time.perf_counter() - t0)
    tile_bytes = layout.tile * layout.tile * 4 * (9 if layout.channels_inside else 1)
    return {"codec_decode_MBps": codec_decode_MBps(path, codec, layout), "patches_per_s": n_patches / best,
            "chunks_per_patch": objects / n_patches,
            "read_amplification": objects * tile_bytes / (n_patches * 9 * 256 * 256 * 4)}


def main() -> None:
    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/chunking.json")
    ap.add_argument("--codecs", default=None, help="comma-separated codec names to run (default: all)")
    ap.add_argument("--no-layouts", action="store_true", help="skip the chunk-layout rows")
    args = ap.parse_args()
    chosen = codecs() if not args.codecs else {k: codecs()[k] for k in args.codecs.split(",")}
    data = scenes(args.scenes)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="chunking-"))
    try:
        default = LAYOUTS[0]
        for cname, codec in chosen.items():  # codecs at the default layout
            p = tmp / f"c-{len(rows)}"
            t0 = time.perf_counter()
            write(p, data, default, codec)
            enc = data.nbytes / (time.perf_counter() - t0) / 1e6
            rows.append({"codec": cname, "layout": default.name, "ratio": data.nbytes / dir_bytes(p),
                         "encode_MBps": enc, **measure(p, data, default, args.patches, codec)})
            shutil.rmtree(p)
        codec = codecs()["zstd3+shuffle"]
        for layout in ([] if args.no_layouts else LAYOUTS[1:]):  # layouts with the default codec
            p = tmp / f"l-{len(rows)}"
            t0 = time.perf_counter()
            write(p, data, layout, codec)
            enc = data.nbytes / (time.perf_counter() - t0) / 1e6
            rows.append({"codec": "zstd3+shuffle", "layout": layout.name, "ratio": data.nbytes / dir_bytes(p),
                         "encode_MBps": enc, **measure(p, data, layout, args.patches, codec)})
            shutil.rmtree(p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cols = ["codec", "layout", "ratio", "encode_MBps", "codec_decode_MBps", "patches_per_s", "chunks_per_patch",
            "read_amplification"]
    print(f"{args.scenes} synthetic full-size scenes ({data.nbytes / 1e6:.0f} MB float32), {args.patches} random 256x256 patches")
    print(" | ".join(f"{c:>28}" if i < 2 else f"{c:>12}" for i, c in enumerate(cols)))
    for r in rows:
        print(" | ".join(f"{r[c]:>28}" if i < 2 else f"{r[c]:>12.2f}" for i, c in enumerate(cols)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"scenes": args.scenes, "patches": args.patches, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
