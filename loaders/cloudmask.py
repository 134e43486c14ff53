"""CloudMask patches from a Zarr store: a PyTorch dataset and a framework-free NumPy iterator.

Patches are 9 x 256 x 256 (reflectance channels first), normalised as the
reference does: ``refs - 0.5`` and ``(bts - 270) / 22``; NaN (fill) becomes 0.
The store is opened lazily, once per process (DataLoader workers included),
because fsspec's event loop does not survive ``fork``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zarr
from torch.utils.data import IterableDataset, get_worker_info

from loaders.chunk_reader import ChunkReader, read_regions
from loaders.common import numpy_batches  # noqa: F401 - re-exported
from loaders.patches import Window, fixed_windows, random_windows
from loaders.workers import worker_context  # noqa: F401 - re-exported: the one start-method choice
from scibench_data.storage.location import StoreLocation
from scibench_data.storage.retries import RemoteReadError

N_REFLECTANCE = 6
N_CHANNELS = 9
BT_OFFSET, BT_SCALE, REFL_OFFSET = 270.0, 22.0, 0.5


def normalise(image: np.ndarray) -> np.ndarray:
    """Reference normalisation of a ``(9, ...)`` image; NaN -> 0. Returns a new float32 array."""
    return normalise_(np.array(image, dtype=np.float32, copy=True))


def normalise_(image: np.ndarray) -> np.ndarray:
    """:func:`normalise` in place on float32 ``(..., 9, H, W)`` (channels third from last)."""
    refl, bts = image[..., :N_REFLECTANCE, :, :], image[..., N_REFLECTANCE:, :, :]
    refl -= REFL_OFFSET
    bts -= BT_OFFSET
    bts *= np.float32(1.0 / BT_SCALE)
    bad = np.isfinite(image)
    np.logical_not(bad, out=bad)
    np.copyto(image, 0.0, where=bad)  # no temporaries beyond one mask: nan_to_num allocates twice more
    return image


def mask_values_(mask: np.ndarray) -> np.ndarray:
    """Stored labels (0 clear, 1 cloud, 255 unlabelled) as float32 in place: unlabelled -> NaN."""
    mask[mask > 1] = np.nan
    return mask


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

    def reader(self, name: str) -> ChunkReader:
        """A :class:`~loaders.chunk_reader.ChunkReader` of an array, made once per process."""
        array = self[name]
        readers = self.__dict__.setdefault("_readers", {})
        if name not in readers or readers[name].array is not array.async_array:
            readers[name] = ChunkReader(array)
        return readers[name]

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


def _readers(group: zarr.Group | StoreHandle) -> tuple[ChunkReader, ChunkReader]:
    if isinstance(group, StoreHandle):
        return group.reader("image"), group.reader("cloud_mask")
    return ChunkReader(group["image"]), ChunkReader(group["cloud_mask"])


def read_windows_into(group: zarr.Group | StoreHandle, windows: Sequence[tuple[int, slice, slice]],
                      image_out: np.ndarray, mask_out: np.ndarray) -> None:
    """Normalised images ``(B, 9, h, w)`` and masks ``(B, h, w)`` (float32, NaN where unlabelled)
    of many ``(scene, rows, columns)`` windows, in one concurrent read (:mod:`loaders.chunk_reader`)."""
    image_r, mask_r = _readers(group)
    channels = slice(0, image_r.shape[1])
    requests = []
    for k, (scene, ys, xs) in enumerate(windows):
        scenes = slice(scene, scene + 1)
        requests += [(image_r, (scenes, channels, ys, xs), image_out[k:k + 1]),
                     (mask_r, (scenes, ys, xs), mask_out[k:k + 1])]
    read_regions(requests)
    normalise_(image_out)
    mask_values_(mask_out)


def _window_buffers(ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """Empty float32 ``(1, 9, h, w)`` image and ``(1, h, w)`` mask for one window."""
    h, w = ys.stop - ys.start, xs.stop - xs.start
    return np.empty((1, N_CHANNELS, h, w), np.float32), np.empty((1, h, w), np.float32)


def read_window(group: zarr.Group | StoreHandle, scene: int, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``(9, h, w)`` float32 image and ``(h, w)`` float32 mask (NaN where unlabelled)."""
    image, mask = _window_buffers(ys, xs)
    read_windows_into(group, [(scene, ys, xs)], image, mask)
    return image[0], mask[0]


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

    ``data[i]`` is one patch; ``data[[i, j, ...]]`` is a whole batch ``(B, 9, p, p)``,
    ``(B, 1, p, p)`` read in one concurrent round (every chunk of the batch in
    flight at once, each decoded once) and, inside a DataLoader worker, built in
    shared memory so it reaches the main process without another copy. Use
    :func:`patch_loader` for a DataLoader that asks for whole batches; a plain
    ``DataLoader(data, batch_size=B)`` also reads each batch in one round
    (``__getitems__``) but stacks the patches once more.

    In the fixed regime the 20 patches of a scene overlap chunk boundaries (the
    reference crop starts at 88, 110), so each process reads the chunk-aligned
    region around the crop once per scene and cuts patches from it: every chunk
    is decoded once per scene instead of up to four times. Patches of one scene
    are adjacent in ``items``; keep the order (``shuffle=False``) or shuffle
    scenes, not patches (:class:`ScenePatchStream`), to benefit.
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

    def _scene_crop(self, scene: int) -> tuple[np.ndarray, np.ndarray]:
        """The normalised chunk-aligned crop of a scene; read once per scene per process,
        into buffers reused for the next scene (patches are copied out of it)."""
        ys, xs = self._crop_bounds
        pid = os.getpid()
        if self._crop is not None and self._crop[:2] == (pid, scene):
            return self._crop[2], self._crop[3]
        if self._crop is not None and self._crop[0] == pid:
            image, mask = self._crop[2], self._crop[3]
        else:
            image, mask = _window_buffers(ys, xs)
        self._crop = None  # a failed read leaves no stale crop behind
        read_windows_into(self.handle, [(scene, ys, xs)], image, mask)
        self._crop = (pid, scene, image, mask)
        return image, mask

    def _fill(self, indices: Sequence[int], image: np.ndarray, mask: np.ndarray) -> None:
        """Patches ``indices`` into ``image`` ``(B, 9, p, p)`` and ``mask`` ``(B, p, p)``."""
        items = [self.items[i] for i in indices]
        try:
            if self._crop_bounds is None:
                read_windows_into(self.handle, [(scene, *win.slices) for scene, win in items], image, mask)
                return
            ys, xs = self._crop_bounds
            for k, (scene, win) in enumerate(items):
                crop_image, crop_mask = self._scene_crop(scene)
                py = slice(win.y0 - ys.start, win.y0 - ys.start + win.size)
                px = slice(win.x0 - xs.start, win.x0 - xs.start + win.size)
                image[k] = crop_image[0, :, py, px]
                mask[k] = crop_mask[0, py, px]
        except Exception as err:  # noqa: BLE001 - any failure below zarr: name what was being read
            raise self._read_error(items, err) from err

    def _read_error(self, items: list, err: Exception) -> RemoteReadError:
        loc = self.handle.location
        scene, win = items[0]
        ys, xs = win.slices
        what = f"scene {scene}, rows {ys.start}:{ys.stop}, columns {xs.start}:{xs.stop}"
        if len(items) > 1:
            what = f"{len(items)} patches of scenes {sorted({s for s, _ in items})} (first: {what})"
        return RemoteReadError(f"{loc.url}: reading {what} failed{'' if loc.is_local else ' after retries'} "
                               f"({type(err).__name__}: {err})")

    def set_epoch(self, epoch: int) -> None:
        self.items = plan_patches(self.scenes, self.shape, self.spec, epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _empty(self, n: int, shared: bool):
        """Output buffers (torch tensors or NumPy arrays) and their NumPy views (mask without its channel axis)."""
        p = self.spec.patch
        if not self.as_torch:
            image, mask = np.empty((n, N_CHANNELS, p, p), np.float32), np.empty((n, 1, p, p), np.float32)
            return image, mask, image, mask[:, 0]
        import torch

        image, mask = torch.empty((n, N_CHANNELS, p, p)), torch.empty((n, 1, p, p))
        if shared:  # a DataLoader worker: the batch goes to the main process through shared memory as is
            image.share_memory_()
            mask.share_memory_()
        return image, mask, image.numpy(), mask.numpy()[:, 0]

    def batch(self, indices: Sequence[int]):
        """Patches ``indices`` as one batch: image ``(B, 9, p, p)``, mask ``(B, 1, p, p)``."""
        indices = [int(i) for i in indices]
        image, mask, image_np, mask_np = self._empty(len(indices), shared=get_worker_info() is not None)
        self._fill(indices, image_np, mask_np)
        return image, mask

    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)):
            return self.batch(i)
        image, mask, image_np, mask_np = self._empty(1, shared=False)
        self._fill([int(i)], image_np, mask_np)
        return image[0], mask[0]

    def __getitems__(self, indices: Sequence[int]) -> list:
        """What ``DataLoader(data, batch_size=B)`` asks for: the batch's patches, read in one round."""
        image, mask = self.batch(indices)
        return list(zip(image, mask))


class ScenePatchStream(IterableDataset):
    """The fixed regime streamed as the reference streams it (a ``torch`` ``IterableDataset``).

    Each DataLoader worker takes its share of the scenes, reads each scene's
    crop once and yields that scene's patches; scenes and the patches within a
    scene are shuffled per epoch (:meth:`set_epoch`), identically in every
    worker, so no scene is read by two workers. With ``batch_size`` it yields
    whole batches (built in shared memory inside a worker) for
    ``DataLoader(stream, batch_size=None)``; :func:`patch_loader` sets this up.
    """

    def __init__(self, patches: CloudMaskPatches, seed: int = 0, batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.patches, self.seed, self.epoch, self.batch_size = patches, seed, 0, batch_size
        self.num_workers = 1  # how many workers share the scenes (for len() in batches; patch_loader sets it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.patches.set_epoch(epoch)

    def __len__(self) -> int:
        """Patches, or with ``batch_size`` the batches all ``num_workers`` workers yield together."""
        if self.batch_size is None:
            return len(self.patches)
        return sum(-(-len(self.order(w, self.num_workers)) // self.batch_size) for w in range(self.num_workers))

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
        order = self.order(*((info.id, info.num_workers) if info else (0, 1)))
        if self.batch_size is None:
            for i in order:
                yield self.patches[i]
            return
        for start in range(0, len(order), self.batch_size):
            yield self.patches.batch(order[start:start + self.batch_size])


def start_worker_server(wait: bool = False) -> threading.Thread:
    """Start :func:`worker_context`'s server now, in the background, so that its one-off start-up
    (a new interpreter importing torch and zarr, about a second) overlaps with opening the
    catalog instead of delaying the first batch. ``wait`` blocks until it is ready.

    The server is started once per process; later calls return at once. Environment variables
    set after it started do not reach DataLoader workers (they fork from the server): put
    credentials and endpoints in storage options, or set them before."""
    def probe() -> None:
        if worker_context().get_start_method() != "forkserver":
            return  # fork or spawn: no server to start
        p = worker_context().Process(target=int)  # the first fork waits for the server's preloads
        p.start()
        p.join()

    t = threading.Thread(target=probe, name="scibench-worker-server", daemon=True)
    t.start()
    if wait:
        t.join()
    return t


def patch_loader(data: CloudMaskPatches | ScenePatchStream, batch_size: int, num_workers: int = 0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, **kwargs):
    """A ``torch`` DataLoader whose workers read and build whole batches (see :class:`CloudMaskPatches`).

    Pass a :class:`ScenePatchStream` for the fixed regime (its ``batch_size`` is set
    here; ``shuffle`` is the stream's own per-epoch scene shuffle) or
    :class:`CloudMaskPatches` for shuffled patches. Extra ``kwargs`` go to the DataLoader.
    """
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers:
        kwargs.setdefault("multiprocessing_context", worker_context())
    if isinstance(data, ScenePatchStream):
        data.batch_size, data.num_workers = batch_size, max(1, num_workers)
        return DataLoader(data, batch_size=None, num_workers=num_workers, **kwargs)
    order = (RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle
             else SequentialSampler(data))
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last), batch_size=None,
                      num_workers=num_workers, **kwargs)


def read_scene(location: StoreLocation | str, scene: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole normalised scene ``(9, H, W)`` and its mask ``(H, W)`` (for inference)."""
    handle = StoreHandle(location if isinstance(location, StoreLocation) else StoreLocation(location))
    _, _, h, w = handle["image"].shape
    return read_window(handle, scene, slice(0, h), slice(0, w))
