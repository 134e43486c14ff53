"""CloudMask patches from a Zarr store: a PyTorch dataset and a framework-free NumPy iterator.

Patches are 9 x 256 x 256 (reflectance channels first), normalised as the
reference does: ``refs - 0.5`` and ``(bts - 270) / 22``; NaN (fill) becomes 0.
The store is opened lazily, once per process (DataLoader workers included),
because fsspec's event loop does not survive ``fork``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zarr
from zarr.core.sync import sync
from torch.utils.data import IterableDataset, get_worker_info

from loaders.common import numpy_batches  # noqa: F401 - re-exported
from loaders.patches import Window, fixed_windows, random_windows
from scibench_data.storage.location import StoreLocation
from scibench_data.storage.retries import RemoteReadError

N_REFLECTANCE = 6
BT_OFFSET, BT_SCALE, REFL_OFFSET = 270.0, 22.0, 0.5


def normalise(image: np.ndarray) -> np.ndarray:
    """Reference normalisation of a ``(9, ...)`` image; NaN -> 0. Returns float32."""
    out = np.array(image, dtype=np.float32, copy=True)
    out[:N_REFLECTANCE] -= REFL_OFFSET
    out[N_REFLECTANCE:] -= BT_OFFSET
    out[N_REFLECTANCE:] *= np.float32(1.0 / BT_SCALE)
    out[~np.isfinite(out)] = 0.0  # in place: nan_to_num would allocate twice more
    return out


class StoreHandle:
    """A zarr group opened on first use in each process (a pid check), never pickled open."""

    def __init__(self, location: StoreLocation) -> None:
        self.location = location
        self._pid: int | None = None
        self._group: zarr.Group | None = None

    @property
    def group(self) -> zarr.Group:
        if self._group is None or self._pid != os.getpid():
            self._group = zarr.open_group(self.location.zarr_store(read_only=True), mode="r")
            self._pid = os.getpid()
        return self._group

    def __getitem__(self, name: str) -> zarr.Array:
        """An array of the group, looked up once per process (so a handle reads like a group)."""
        group = self.group
        arrays = self.__dict__.setdefault("_arrays", {})
        if arrays.get("_group") is not group:
            arrays.clear()
            arrays["_group"] = group
        if name not in arrays:
            arrays[name] = group[name]
        return arrays[name]

    def __getstate__(self) -> dict:
        return {"location": self.location, "_pid": None, "_group": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


@dataclass(frozen=True)
class PatchSpec:
    """Which patches to read: ``mode`` ``"fixed"`` (the reference's) or ``"random"``."""

    mode: str = "fixed"
    patch: int = 256
    patches_per_scene: int = 20  # random mode only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "random"):
            raise ValueError(f"mode must be 'fixed' or 'random', got {self.mode!r}")
        if self.patches_per_scene < 1:
            raise ValueError(f"patches_per_scene must be >= 1, got {self.patches_per_scene}")


def plan_patches(scenes: Sequence[int], shape: tuple[int, int], spec: PatchSpec, epoch: int = 0) -> list[tuple[int, Window]]:
    """Every (scene, window) of one epoch; random windows are reseeded per epoch."""
    h, w = shape
    if spec.mode == "fixed":
        wins = fixed_windows(h, w, spec.patch)
        return [(s, win) for s in scenes for win in wins]
    rng = np.random.default_rng([spec.seed, epoch])
    return [(s, win) for s in scenes for win in random_windows(rng, spec.patches_per_scene, h, w, spec.patch)]


def read_window(group: zarr.Group | StoreHandle, scene: int, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``(9, h, w)`` float32 image and ``(h, w)`` float32 mask (NaN where unlabelled)."""
    image, mask = sync(_read_both(group["image"].async_array, group["cloud_mask"].async_array,
                                  (scene, slice(None), ys, xs), (scene, ys, xs)))
    mask = np.asarray(mask).astype(np.float32)
    mask[mask > 1] = np.nan
    return normalise(np.asarray(image)), mask


async def _read_both(image, mask, image_sel, mask_sel):
    """Both arrays' chunks requested at once: one round trip per patch on object storage, not two."""
    return await asyncio.gather(image.getitem(image_sel), mask.getitem(mask_sel))


def read_patch(group: zarr.Group | StoreHandle, scene: int, win: Window) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``(9, p, p)`` float32 image and ``(p, p)`` float32 mask (NaN where unlabelled)."""
    return read_window(group, scene, *win.slices)


def aligned_bounds(windows: Sequence[Window], chunks: tuple[int, int], shape: tuple[int, int]) -> tuple[slice, slice]:
    """The chunk-aligned region covering all ``windows`` (each chunk in it is read once)."""
    (cy, cx), (h, w) = chunks, shape
    y0 = min(win.y0 for win in windows) // cy * cy
    x0 = min(win.x0 for win in windows) // cx * cx
    y1 = min(h, -(-max(win.y0 + win.size for win in windows) // cy) * cy)
    x1 = min(w, -(-max(win.x0 + win.size for win in windows) // cx) * cx)
    return slice(y0, y1), slice(x0, x1)


class CloudMaskPatches:
    """Map-style dataset of (image, mask) patches; usable as a ``torch.utils.data.Dataset``.

    ``scenes`` are indices along the store's ``scene`` dimension (e.g. a split).
    Call :meth:`set_epoch` to draw new random windows each epoch.

    In the fixed regime the 20 patches of a scene overlap chunk boundaries (the
    reference crop starts at 88, 110), so each process reads the chunk-aligned
    region around the crop once per scene and cuts patches from it: every chunk
    is decoded once per scene instead of up to four times. Patches of one scene
    are adjacent in ``items``; keep the order (``shuffle=False``) or shuffle
    scenes, not patches, to benefit.
    """

    def __init__(self, location: StoreLocation | str, scenes: Sequence[int] | None = None,
                 spec: PatchSpec = PatchSpec(), as_torch: bool = True) -> None:
        self.handle = StoreHandle(location if isinstance(location, StoreLocation) else StoreLocation(location))
        g = self.handle.group
        n_scenes, _, h, w = g["image"].shape
        self.shape = (h, w)
        self.scenes = list(range(n_scenes)) if scenes is None else [int(s) for s in scenes]
        bad = [s for s in self.scenes if not 0 <= s < n_scenes]
        if bad:
            raise IndexError(f"scene indices {bad[:5]} outside 0..{n_scenes - 1}")
        self.spec = spec
        self.as_torch = as_torch
        self._crop: tuple[int, int, np.ndarray, np.ndarray] | None = None  # (pid, scene, image, mask)
        self._crop_bounds = (aligned_bounds(fixed_windows(h, w, spec.patch), tuple(g["image"].chunks[2:]), (h, w))
                             if spec.mode == "fixed" else None)
        self.set_epoch(0)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_crop": None}

    def _read(self, scene: int, win: Window) -> tuple[np.ndarray, np.ndarray]:
        if self._crop_bounds is None:
            return read_patch(self.handle, scene, win)
        ys, xs = self._crop_bounds
        if self._crop is None or self._crop[:2] != (os.getpid(), scene):
            self._crop = (os.getpid(), scene, *read_window(self.handle, scene, ys, xs))
        _, _, image, mask = self._crop
        py, px = slice(win.y0 - ys.start, win.y0 - ys.start + win.size), slice(win.x0 - xs.start, win.x0 - xs.start + win.size)
        return image[:, py, px].copy(), mask[py, px].copy()

    def set_epoch(self, epoch: int) -> None:
        self.items = plan_patches(self.scenes, self.shape, self.spec, epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        scene, win = self.items[i]
        try:
            image, mask = self._read(scene, win)
        except Exception as err:  # noqa: BLE001 - any failure below zarr: name what was being read
            ys, xs = win.slices
            loc = self.handle.location
            raise RemoteReadError(
                f"{loc.url}: reading scene {scene}, rows {ys.start}:{ys.stop}, columns {xs.start}:{xs.stop} "
                f"failed{'' if loc.is_local else ' after retries'} ({type(err).__name__}: {err})") from err
        if self.as_torch:
            import torch

            return torch.from_numpy(image), torch.from_numpy(mask)[None]
        return image, mask[None]


class ScenePatchStream(IterableDataset):
    """The fixed regime streamed as the reference streams it (a ``torch`` ``IterableDataset``).

    Each DataLoader worker takes its share of the scenes, reads each scene's
    crop once and yields that scene's patches; scenes and the patches within a
    scene are shuffled per epoch (:meth:`set_epoch`), identically in every
    worker, so no scene is read by two workers.
    """

    def __init__(self, patches: CloudMaskPatches, seed: int = 0) -> None:
        self.patches, self.seed, self.epoch = patches, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.patches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.patches)

    def order(self, worker: int = 0, n_workers: int = 1) -> list[int]:
        """Item indices this worker yields, in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        by_scene: dict[int, list[int]] = {}
        for i, (scene, _) in enumerate(self.patches.items):
            by_scene.setdefault(scene, []).append(i)
        scenes = [int(s) for s in rng.permutation(list(by_scene))]
        within = {s: [int(i) for i in rng.permutation(by_scene[s])] for s in scenes}
        return [i for s in scenes[worker::n_workers] for i in within[s]]

    def __iter__(self):
        info = get_worker_info()
        for i in self.order(*((info.id, info.num_workers) if info else (0, 1))):
            yield self.patches[i]


def read_scene(location: StoreLocation | str, scene: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole normalised scene ``(9, H, W)`` and its mask ``(H, W)`` (for inference)."""
    handle = StoreHandle(location if isinstance(location, StoreLocation) else StoreLocation(location))
    g = handle.group
    mask = g["cloud_mask"][scene].astype(np.float32)
    mask[mask > 1] = np.nan
    return normalise(g["image"][scene]), mask
