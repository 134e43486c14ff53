"""STEMDL source formats: raw CBED HDF5 files and preprocessed ``sample-{i}.npz`` files.

Layout ``raw``: ``*.h5`` files, in ``train/``, ``test/``, ``dev/`` folders or flat.
Each sample is one HDF5 group with integer attribute ``space_group`` and dataset
``cbed_stack`` (3, H, W) float32 (H = W = 512 in the real data): three
convergent-beam electron diffraction patterns of one material seen along three
orientations. Our additions, optional when reading: dataset ``potential``
(1, H, W) float32, the projected potential used as the reconstruction target,
and group attribute ``material`` (else the group name up to its last ``_``).

Layout ``npz``: one ``sample-{i}.npz`` per sample with ``data`` (3, 128, 128)
float32 (already preprocessed, see :func:`preprocess_stack`) and ``label`` (1,);
our optional addition ``material`` (a 0-d unicode array). Read with
``allow_pickle=False``: a file holding a pickled object array is rejected.

Both readers return :class:`Sample` objects, so one converter serves both.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from dataclasses import dataclass
from typing import Literal

import fsspec
import h5py
import numpy as np

from scibench_data.datasets.stemdl import N_CLASSES
from scibench_data.formats import SourceFormatError
from scibench_data.formats.hdf5_safety import refuse_indirection

Layout = Literal["raw", "npz"]
LAYOUTS: tuple[str, ...] = ("raw", "npz")
N_PROJECTIONS = 3
#: Space-group numbers are used directly as class indices: 0 is unused, 1..230 are real.
RAW_PATTERN = 512
PREPROCESSED_SIZE = 128
LOG_FLOOR = -17.0
LOG_SCALE = 10.0
CLIP_MAX = 255.0
#: Folder names that carry a split, mapped onto our split names.
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train", "training": "train", "dev": "dev", "val": "dev", "validation": "dev",
    "test": "test", "testing": "test", "inference": "inference",
}
SPLITS: tuple[str, ...] = ("train", "dev", "test", "inference")
RAW_SUFFIXES = (".h5", ".hdf5")
_NPZ_NAME = re.compile(r"^sample-(\d+)\.npz$")


# --------------------------------------------------------------------------- preprocessing (pure)


def log_scale(x: np.ndarray) -> np.ndarray:
    """The reference intensity scaling: ``clip((max(-17, log(x)) + 17) * 10, 0, 255)``; x <= 0 or NaN -> 0."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.log(np.where(x > 0, x, 0.0))
    return np.clip((np.maximum(LOG_FLOOR, logged) - LOG_FLOOR) * LOG_SCALE, 0.0, CLIP_MAX)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of area-resize weights: each output pixel averages the
    input pixels it covers, weighted by overlap (exact block mean for integer factors)."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    edges_out = np.arange(n_out + 1) * (n_in / n_out)
    lo = np.maximum(edges_out[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges_out[1:, None], np.arange(1, n_in + 1)[None, :])
    w = np.clip(hi - lo, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Area-resize the last two axes of ``images`` to ``(size, size)``."""
    h, w = images.shape[-2:]
    ry, rx = area_weights(h, size), area_weights(w, size)
    return ry @ np.asarray(images, dtype=np.float64) @ rx.T


def preprocess_stack(stack: np.ndarray, size: int = PREPROCESSED_SIZE) -> np.ndarray:
    """The STFC ds1a preprocessing of a ``(..., 3, H, W)`` CBED stack: per pattern
    ``max(-17, log(x)) + 17``, x10, clip to [0, 255], area-resize to ``size`` x ``size``. float32."""
    return area_resize(log_scale(stack), size).astype(np.float32)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Sample:
    """One sample, ready to store."""

    key: str  # group name (raw) or file name (npz)
    cbed: np.ndarray  # (3, H, W) float32
    space_group: int
    material: str
    potential: np.ndarray | None = None  # (H, W) float32, raw layout (our addition)

    def __post_init__(self) -> None:
        if self.cbed.ndim != 3 or self.cbed.shape[0] != N_PROJECTIONS:
            raise ValueError(f"cbed must be (3, H, W), got {self.cbed.shape}")
        if not 0 <= self.space_group < N_CLASSES:
            raise ValueError(f"space_group must be in 0..{N_CLASSES - 1}, got {self.space_group}")
        if self.potential is not None and self.potential.shape != self.cbed.shape[1:]:
            raise ValueError(f"potential shape {self.potential.shape} != pattern shape {self.cbed.shape[1:]}")


@dataclass(frozen=True)
class SampleInfo:
    """What a raw group says about its sample without reading the patterns."""

    key: str
    space_group: int
    material: str
    shape: tuple[int, ...]
    has_potential: bool


@dataclass(frozen=True)
class SourceFile:
    """A source file to convert and the split its folder names (None when flat)."""

    path: str
    split: str | None


@dataclass(frozen=True)
class Rejected:
    path: str
    reason: str


@dataclass(frozen=True)
class SourceListing:
    layout: str
    files: tuple[SourceFile, ...]
    rejected: tuple[Rejected, ...] = ()


def _kind(base: str) -> str | None:
    if base.endswith(RAW_SUFFIXES):
        return "raw"
    if base.endswith(".npz"):
        return "npz"
    return None


def discover_sources(fs: fsspec.AbstractFileSystem, root: str) -> SourceListing:
    """List the source files under ``root`` (flat, or one level of split folders) and detect the layout.

    npz files not named ``sample-{i}.npz`` and folders that are not split names are
    returned as rejected, never silently dropped. Files sort by split folder, then name
    (npz by sample number).
    """
    if not fs.exists(root):
        raise FileNotFoundError(f"source folder {root} does not exist")
    found: list[tuple[str, SourceFile]] = []
    rejected: list[Rejected] = []
    for entry in fs.ls(root, detail=True):
        path = entry["name"].rstrip("/")
        base = posixpath.basename(path)
        if entry["type"] == "directory":
            split = SPLIT_FOLDERS.get(base.lower())
            if split is None:
                if any(_kind(posixpath.basename(p)) for p in fs.ls(path, detail=False)):
                    rejected.append(Rejected(path, f"folder {base!r} is not a split name "
                                                   f"({', '.join(sorted(SPLIT_FOLDERS))})"))
                continue
            children: list[tuple[str, str | None]] = [(p["name"].rstrip("/"), split) for p in fs.ls(path, detail=True) if p["type"] != "directory"]
        else:
            children = [(path, None)]
        for child, split in children:
            kind = _kind(posixpath.basename(child))
            if kind is not None:
                found.append((kind, SourceFile(child, split)))
    kinds = {k for k, _ in found}
    if not kinds:
        raise FileNotFoundError(f"no STEMDL sources (*.h5 files or sample-*.npz files) found in {root}")
    if len(kinds) > 1:
        raise ValueError(f"{root} holds both raw *.h5 files and *.npz files; convert them separately")
    layout = kinds.pop()
    files = []
    for _, sf in found:
        if layout == "npz" and not _NPZ_NAME.match(posixpath.basename(sf.path)):
            rejected.append(Rejected(sf.path, "npz file not named sample-{i}.npz"))
            continue
        files.append(sf)
    files.sort(key=lambda f: (SPLITS.index(f.split) if f.split else -1, _sort_key(f.path)))
    return SourceListing(layout=layout, files=tuple(files), rejected=tuple(rejected))


def _sort_key(path: str) -> tuple:
    m = _NPZ_NAME.match(posixpath.basename(path))
    return (int(m.group(1)), path) if m else (-1, path)


# --------------------------------------------------------------------------- layout raw


def _material_of(name: str, attrs: h5py.AttributeManager) -> str:
    if "material" in attrs:
        m = attrs["material"]
        return m.decode() if isinstance(m, bytes) else str(m)
    return name.rsplit("_", 1)[0] if "_" in name else name


def _space_group(path: str, name: str, attrs: h5py.AttributeManager) -> int:
    if "space_group" not in attrs:
        raise SourceFormatError(path, f"group {name!r} has no attribute 'space_group'")
    value = np.asarray(attrs["space_group"]).ravel()
    if value.size != 1 or not np.issubdtype(value.dtype, np.number) or value[0] != int(value[0]):
        raise SourceFormatError(path, f"group {name!r}: space_group {attrs['space_group']!r} is not an integer")
    sg = int(value[0])
    if not 0 <= sg < N_CLASSES:
        raise SourceFormatError(path, f"group {name!r}: space_group {sg} outside 0..{N_CLASSES - 1}")
    return sg


def _sample_groups(h: h5py.File, path: str) -> list[str]:
    names = sorted(k for k, v in h.items() if isinstance(v, h5py.Group))
    if not names:
        raise SourceFormatError(path, "holds no sample groups")
    return names


def _check_cbed(path: str, name: str, g: h5py.Group) -> h5py.Dataset:
    if "cbed_stack" not in g:
        raise SourceFormatError(path, f"group {name!r} has no dataset 'cbed_stack' (found {sorted(g.keys())})")
    d = g["cbed_stack"]
    if d.ndim != 3 or d.shape[0] != N_PROJECTIONS or not np.issubdtype(d.dtype, np.number):
        raise SourceFormatError(path, f"group {name!r}: cbed_stack is {d.shape} {d.dtype}, expected (3, H, W) numeric")
    if d.shape[1] > RAW_PATTERN or d.shape[2] > RAW_PATTERN or d.dtype.kind not in "iuf" or d.dtype.itemsize > 8:
        raise SourceFormatError(path, f"group {name!r}: cbed_stack declares {d.shape} {d.dtype}, beyond the format's "
                                      f"(3, {RAW_PATTERN}, {RAW_PATTERN}) real numbers; nothing read")
    return d


def scan_raw_file(fs: fsspec.AbstractFileSystem, path: str) -> list[SampleInfo]:
    """The samples of one raw file, reading metadata only."""
    try:
        with fs.open(path, "rb") as f, h5py.File(f, "r") as h:
            refuse_indirection(h, path)  # external storage, virtual datasets, external links
            out = []
            for name in _sample_groups(h, path):
                g = h[name]
                d = _check_cbed(path, name, g)
                out.append(SampleInfo(key=name, space_group=_space_group(path, name, g.attrs),
                                      material=_material_of(name, g.attrs), shape=tuple(d.shape),
                                      has_potential="potential" in g))
            return out
    except SourceFormatError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise SourceFormatError(path, f"cannot be read as a STEMDL HDF5 file ({err})") from err


def read_raw_file(fs: fsspec.AbstractFileSystem, path: str, with_potential: bool = True) -> list[Sample]:
    """Every sample of one raw file, in group-name order."""
    try:
        with fs.open(path, "rb") as f, h5py.File(f, "r") as h:
            refuse_indirection(h, path)  # external storage, virtual datasets, external links
            samples = []
            for name in _sample_groups(h, path):
                g = h[name]
                cbed = _check_cbed(path, name, g)[()].astype(np.float32)
                if not np.isfinite(cbed).all():
                    raise SourceFormatError(path, f"group {name!r}: cbed_stack holds NaN or infinite values")
                potential = None
                if with_potential:
                    if "potential" not in g:
                        raise SourceFormatError(path, f"group {name!r} has no dataset 'potential'")
                    p = g["potential"]
                    if p.shape != (1, *cbed.shape[1:]):
                        raise SourceFormatError(path, f"group {name!r}: potential is {p.shape}, "
                                                      f"expected (1, {cbed.shape[1]}, {cbed.shape[2]})")
                    potential = p[0].astype(np.float32)
                samples.append(Sample(key=name, cbed=cbed, space_group=_space_group(path, name, g.attrs),
                                      material=_material_of(name, g.attrs), potential=potential))
            return samples
    except SourceFormatError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise SourceFormatError(path, f"cannot be read as a STEMDL HDF5 file ({err})") from err


# --------------------------------------------------------------------------- layout npz


def read_npz_sample(fs: fsspec.AbstractFileSystem, path: str) -> Sample:
    """One preprocessed ``sample-{i}.npz`` (``allow_pickle=False``)."""
    base = posixpath.basename(path)
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
        if not raw.startswith(b"PK\x03\x04"):
            raise SourceFormatError(path, "cannot be read as an npz file (not a zip archive)")
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            for key in ("data", "label"):
                if key not in z.files:
                    raise SourceFormatError(path, f"missing array {key!r} (found {sorted(z.files)})")
            data, label = z["data"], z["label"]
            material = str(z["material"]) if "material" in z.files else posixpath.splitext(base)[0]
    except SourceFormatError:
        raise
    except ValueError as err:  # includes "Object arrays cannot be loaded when allow_pickle=False"
        raise SourceFormatError(path, f"holds a pickled object array, refused: npz files are read without "
                                      f"unpickling ({err})") from err
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise SourceFormatError(path, f"cannot be read as an npz file ({type(err).__name__}: {err})") from err
    if data.ndim != 3 or data.shape[0] != N_PROJECTIONS or not np.issubdtype(data.dtype, np.number):
        raise SourceFormatError(path, f"data is {data.shape} {data.dtype}, expected (3, H, W) numeric")
    label = np.asarray(label).ravel()
    if label.size != 1 or not np.issubdtype(label.dtype, np.number) or label[0] != int(label[0]):
        raise SourceFormatError(path, f"label {label!r} is not one integer")
    sg = int(label[0])
    if not 0 <= sg < N_CLASSES:
        raise SourceFormatError(path, f"label {sg} outside 0..{N_CLASSES - 1}")
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise SourceFormatError(path, "data holds NaN or infinite values")
    return Sample(key=base, cbed=data, space_group=sg, material=material)


def npz_shape(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, int, int]:
    """The ``data`` shape of an npz sample (reads the one file)."""
    n, h, w = read_npz_sample(fs, path).cbed.shape
    return int(n), int(h), int(w)
