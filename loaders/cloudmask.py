"""CloudMask patches from a Zarr store: a PyTorch dataset and a framework-free NumPy iterator.

Patches are 9 x 256 x 256 (reflectance channels first), normalised as the
reference does: ``refs - 0.5`` and ``(bts - 270) / 22``; NaN (fill) becomes 0.
The store is opened lazily, once per process (DataLoader workers included),
because fsspec's event loop does not survive ``fork`` (:class:`loaders.store.StoreHandle`);
constructors read nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import get_worker_info

from loaders import decode_pool
from loaders.chunk_reader import ChunkReader, batch_buffer, read_regions
from loaders.common import (
    Positions,
    numpy_batches,  # noqa: F401 - re-exported
)
from loaders.patches import Window, fixed_windows, random_windows
from loaders.prefetch import PrefetchLimits
from loaders.prefetch import start as start_prefetch
from loaders.sharding import (
    ResumableLoader,
    ShardedBatches,
    ShardSpec,
    distributed_rank,
)
from loaders.store import ZarrStore, store_location, zarr_handle
from loaders.workers import (
    start_worker_server,  # noqa: F401 - re-exported
    worker_context,
)
from scibench_data.datasets.cloudmask import PATCH
from scibench_data.storage.store.integrity import ChunkIntegrityError
from scibench_data.storage.store.location import StoreLocation
from scibench_data.storage.store.retries import RemoteReadError

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
    bts /= np.float32(BT_SCALE)  # divide, as the reference does: * (1/22) is 1 ulp off on many values
    _zero_non_finite_(image)
    return image


def _zero_non_finite_(image: np.ndarray) -> None:
    """NaN and inf -> 0 in place, in ``(..., 9, H, W)`` windows; a window whose sum is finite holds
    neither, so one read pass (no temporaries) suffices for windows without fill."""
    lead = image.shape[:-3]
    sums = np.add.reduce(image.reshape(*lead, -1), axis=-1) if image.flags.c_contiguous else image.sum(axis=(-3, -2, -1))
    for k in zip(*np.nonzero(~np.isfinite(sums))) if lead else ([()] if not np.isfinite(sums) else []):
        window = image[k]
        np.copyto(window, 0.0, where=~np.isfinite(window))


def mask_values_(mask: np.ndarray) -> np.ndarray:
    """Stored labels (0 clear, 1 cloud, 255 unlabelled) as float32 in place: unlabelled -> NaN."""
    mask[mask > 1] = np.nan
    return mask


@dataclass(frozen=True)
class PatchSpec:
    """Which patches to read: ``mode`` ``"fixed"`` (the reference's) or ``"random"``."""

    mode: str = "fixed"
    patch: int = PATCH
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


def _readers(group: zarr.Group | ZarrStore) -> tuple[ChunkReader, ChunkReader]:
    if isinstance(group, ZarrStore):
        return group.reader("image"), group.reader("cloud_mask")
    image, mask = group["image"], group["cloud_mask"]
    if not (isinstance(image, zarr.Array) and isinstance(mask, zarr.Array)):
        raise TypeError("'image' and 'cloud_mask' must be arrays")
    return ChunkReader(image), ChunkReader(mask)


def read_windows_into(group: zarr.Group | ZarrStore, windows: Sequence[tuple[int, slice, slice]],
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
    # after all pieces: in place over contiguous windows (fused per piece measured slower), on the decode threads
    decode_pool.split_apply(normalise_, image_out)
    mask_values_(mask_out)


def _window_buffers(ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """Empty float32 ``(1, 9, h, w)`` image and ``(1, h, w)`` mask for one window."""
    h, w = ys.stop - ys.start, xs.stop - xs.start
    return np.empty((1, N_CHANNELS, h, w), np.float32), np.empty((1, h, w), np.float32)


def read_window(group: zarr.Group | ZarrStore, scene: int, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``(9, h, w)`` float32 image and ``(h, w)`` float32 mask (NaN where unlabelled)."""
    image, mask = _window_buffers(ys, xs)
    read_windows_into(group, [(scene, ys, xs)], image, mask)
    return image[0], mask[0]


def read_patch(group: zarr.Group | ZarrStore, scene: int, win: Window) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass(frozen=True)
class _Layout:
    """What a :class:`CloudMaskPatches` reads from its store once: its scenes, their shape, the fixed crop."""

    scenes: list[int]
    shape: tuple[int, int]
    crop_bounds: tuple[slice, slice] | None  # the chunk-aligned region of the fixed patches

    @classmethod
    def read(cls, store: ZarrStore, scenes: list[int] | None, spec: PatchSpec) -> _Layout:
        image = store["image"]
        n_scenes, _, h, w = image.shape
        chosen = list(range(n_scenes)) if scenes is None else scenes
        bad = [s for s in chosen if not 0 <= s < n_scenes]
        if bad:
            raise IndexError(f"scene indices {bad[:5]} outside 0..{n_scenes - 1}")
        cy, cx = image.chunks[2:]
        bounds = aligned_bounds(fixed_windows(h, w, spec.patch), (cy, cx), (h, w)) if spec.mode == "fixed" else None
        return cls(chosen, (h, w), bounds)


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

    Patches of a scene share chunks (the fixed crop starts at 88, 110, so each
    patch touches four), and a batch decodes each chunk once: batches drawn from
    few scenes (:class:`ScenePatchStream`, :func:`patch_loader`: scenes shuffled,
    then their patches) decode far fewer chunks than batches of patches shuffled
    over all scenes. A single fixed patch ``data[i]`` is cut from its scene's
    chunk-aligned crop, read once per scene and process.
    """

    def __init__(self, location: StoreLocation | str, scenes: Sequence[int] | None = None,
                 spec: PatchSpec = PatchSpec(), as_torch: bool = True) -> None:
        self.location = store_location(location)
        self.handle = zarr_handle(self.location)
        self.spec = spec
        self.as_torch = as_torch
        self.epoch = 0
        self._scenes = None if scenes is None else [int(s) for s in scenes]
        self._layout: _Layout | None = None  # read from the store on first use
        self._items: tuple[int, list[tuple[int, Window]]] | None = None  # (epoch, its patches)
        self._crop: tuple[ZarrStore, int, np.ndarray, np.ndarray] | None = None  # (store, scene, image, mask)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_crop": None}

    def _store(self) -> ZarrStore:
        """This process's open store; the first call reads the layout and checks the scene indices."""
        store = self.handle.get()
        self._known_layout()
        return store

    def open(self) -> None:
        """Open the store now and check the scene indices (else that happens on first use)."""
        self._store()

    def _known_layout(self) -> _Layout:
        if self._layout is None:
            self._layout = _Layout.read(self.handle.get(), self._scenes, self.spec)
        return self._layout

    @property
    def scenes(self) -> list[int]:
        """Indices along the store's ``scene`` dimension (all of them unless given)."""
        return self._known_layout().scenes

    @property
    def shape(self) -> tuple[int, int]:
        """A scene's ``(rows, columns)``."""
        return self._known_layout().shape

    @property
    def crop_bounds(self) -> tuple[slice, slice] | None:
        """The chunk-aligned region of a scene the fixed patches cover (None in random mode)."""
        return self._known_layout().crop_bounds

    @property
    def items(self) -> list[tuple[int, Window]]:
        """Every ``(scene, window)`` of the current epoch."""
        if self._items is None or self._items[0] != self.epoch:
            self._items = (self.epoch, plan_patches(self.scenes, self.shape, self.spec, self.epoch))
        return self._items[1]

    @items.setter
    def items(self, value: Sequence[tuple[int, Window]]) -> None:
        """Replace the current epoch's patches (as before this was a property; benchmarks set it)."""
        self._items = (self.epoch, list(value))

    ahead: PrefetchLimits | None = PrefetchLimits()  # loaders.prefetch's bounds; None: no prefetch

    def prefetch(self, indices: Sequence[int]) -> None:
        """Start fetching, in the background, the remote chunks of batch ``indices`` (this process's next)."""
        if self.ahead is not None and len(indices) > 1:  # the regions read_windows_into reads
            image_r, mask_r = _readers(self._store())  # the readers the batch read uses (prefetch is keyed by reader)
            items = [self.items[int(i)] for i in indices]
            start_prefetch([(image_r, (slice(s, s + 1), slice(0, image_r.shape[1]), *w.slices)) for s, w in items]
                           + [(mask_r, (slice(s, s + 1), *w.slices)) for s, w in items], self.ahead)

    def _scene_crop(self, store: ZarrStore, scene: int, bounds: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """The normalised chunk-aligned crop ``bounds`` of a scene; read once per scene per process (per
        open store), into buffers reused for the next scene (patches are copied out of it)."""
        ys, xs = bounds
        if self._crop is not None and self._crop[0] is store and self._crop[1] == scene:
            return self._crop[2], self._crop[3]
        if self._crop is not None and self._crop[0] is store:
            image, mask = self._crop[2], self._crop[3]
        else:
            image, mask = _window_buffers(ys, xs)
        self._crop = None  # a failed read leaves no stale crop behind
        read_windows_into(store, [(scene, ys, xs)], image, mask)
        self._crop = (store, scene, image, mask)
        return image, mask

    def _fill(self, indices: Sequence[int], image: np.ndarray, mask: np.ndarray) -> None:
        """Patches ``indices`` into ``image`` ``(B, 9, p, p)`` and ``mask`` ``(B, p, p)``.

        A batch reads just its windows, every chunk they touch once (a rank or worker reads
        no chunk it does not use); a single fixed patch comes from its scene's cached crop."""
        all_items = self.items  # the first use in the process that made the dataset opens the store here
        items = [all_items[i] for i in indices]
        try:
            store = self._store()  # in another process (a worker) it opens here: a failure names the window
            bounds = self._known_layout().crop_bounds
            if bounds is None or len(items) > 1:
                read_windows_into(store, [(scene, *win.slices) for scene, win in items], image, mask)
                return
            ys, xs = bounds
            for k, (scene, win) in enumerate(items):
                crop_image, crop_mask = self._scene_crop(store, scene, bounds)
                py = slice(win.y0 - ys.start, win.y0 - ys.start + win.size)
                px = slice(win.x0 - xs.start, win.x0 - xs.start + win.size)
                image[k] = crop_image[0, :, py, px]
                mask[k] = crop_mask[0, py, px]
        except Exception as err:
            raise self._read_error(items, err) from err

    def _read_error(self, items: list[tuple[int, Window]], err: Exception) -> Exception:
        loc = self.location
        scene, win = items[0]
        ys, xs = win.slices
        what = f"scene {scene}, rows {ys.start}:{ys.stop}, columns {xs.start}:{xs.stop}"
        if len(items) > 1:
            what = f"{len(items)} patches of scenes {sorted({s for s, _ in items})} (first: {what})"
        if isinstance(err, ChunkIntegrityError):  # corrupted or lost data: not a storage outage, never retried
            hit = [(s, w) for s, w in items if err.chunk and s == err.chunk[0]]
            if hit:
                (scene, win), (ys, xs) = hit[0], hit[0][1].slices
                what = f"scene {scene}, rows {ys.start}:{ys.stop}, columns {xs.start}:{xs.stop}"
            out = type(err)(f"{err} (reading {what})")
            out.chunk = err.chunk
            return out
        return RemoteReadError(f"{loc.url}: reading {what} failed{'' if loc.is_local else ' after retries'} "
                               f"({type(err).__name__}: {err})")

    def set_epoch(self, epoch: int) -> None:
        """Patches of ``epoch`` from now on (random windows are drawn again; planned on first use)."""
        self.epoch = epoch

    def blocks(self) -> np.ndarray:
        """The scene of each item: the unit whose chunks are read together (see :mod:`loaders.sharding`)."""
        return np.fromiter((scene for scene, _ in self.items), dtype=np.int64, count=len(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def _empty(self, n: int, shared: bool) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        """Output buffers (torch tensors or NumPy arrays) and their NumPy views (mask without its channel axis)."""
        p = self.spec.patch
        if not self.as_torch:
            image_np, mask_np = batch_buffer((n, N_CHANNELS, p, p), np.float32), batch_buffer((n, 1, p, p), np.float32)
            return image_np, mask_np, image_np, mask_np[:, 0]
        if shared:  # a DataLoader worker: the batch goes to the main process through shared memory as is
            image, mask = torch.empty((n, N_CHANNELS, p, p)), torch.empty((n, 1, p, p))
            image.share_memory_()
            mask.share_memory_()
        else:  # on huge pages: a fresh batch faulted in 4 KiB at a time costs more than decoding it
            image = torch.from_numpy(batch_buffer((n, N_CHANNELS, p, p), np.float32))
            mask = torch.from_numpy(batch_buffer((n, 1, p, p), np.float32))
        return image, mask, image.numpy(), mask.numpy()[:, 0]

    def batch(self, indices: Positions) -> Any:
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

    def __getitems__(self, indices: Positions) -> list:
        """What ``DataLoader(data, batch_size=B)`` asks for: the batch's patches, read in one round."""
        image, mask = self.batch(indices)
        return list(zip(image, mask))


class ScenePatchStream(ShardedBatches):
    """Patches streamed in scene blocks, sharded across ranks and DataLoader workers, resumable
    (a ``torch`` ``IterableDataset``; :mod:`loaders.sharding` has the arithmetic).

    Per epoch (:meth:`set_epoch`) the scenes are shuffled, then the patches inside each scene
    (or inside each group of ``mix`` consecutive scenes), from ``(seed, epoch)`` only; rank
    ``rank`` of ``world_size`` (default: from ``torch.distributed`` or ``RANK``/``WORLD_SIZE``)
    takes its contiguous share, the remainder padded or dropped (``remainder``), and its
    DataLoader workers build alternate batches, each read in one concurrent round touching
    only its own windows' chunks. With ``batch_size=None`` it yields single patches.
    :func:`patch_loader` wraps it in a resumable DataLoader.
    """

    def __init__(self, patches: CloudMaskPatches, seed: int = 0, batch_size: int | None = None, *,
                 shuffle: bool = True, mix: int = 1, rank: int | None = None, world_size: int | None = None,
                 remainder: str = "pad", drop_last: bool = False) -> None:
        rank, world_size = distributed_rank(rank, world_size)
        self.single = batch_size is None
        super().__init__(_PatchBatches(patches, self.single),
                         ShardSpec(batch_size or 1, seed, shuffle, mix, rank, world_size, remainder, drop_last))
        self.patches, self.seed = patches, seed

    @property
    def batch_size(self) -> int | None:
        return None if self.single else self.spec.batch_size

    def with_batches(self, batch_size: int, drop_last: bool) -> ScenePatchStream:
        """The same stream cut into batches of ``batch_size``."""
        s = self.spec
        stream = ScenePatchStream(self.patches, s.seed, batch_size, shuffle=s.shuffle, mix=s.mix, rank=s.rank,
                                  world_size=s.world_size, remainder=s.remainder, drop_last=drop_last)
        stream.set_epoch(self.epoch)
        return stream

    def order(self) -> list[int]:
        """Item indices this rank yields in the current epoch, in order (all workers together)."""
        return [int(i) for b in self.batches() for i in b]


class _PatchBatches:
    """:class:`CloudMaskPatches` as a :class:`loaders.sharding.BatchSource` (single patches when ``single``)."""

    def __init__(self, patches: CloudMaskPatches, single: bool) -> None:
        self.patches, self.single = patches, single

    def set_epoch(self, epoch: int) -> None:
        self.patches.set_epoch(epoch)

    def blocks(self) -> np.ndarray:
        return self.patches.blocks()

    def batch(self, indices: Positions) -> Any:
        return self.patches[int(indices[0])] if self.single else self.patches.batch(indices)

    def prefetch(self, indices: Sequence[int]) -> None:
        if not self.single:
            self.patches.prefetch(indices)


def patch_loader(data: CloudMaskPatches | ScenePatchStream, batch_size: int, num_workers: int = 0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, *, mix: int = 1,
                 rank: int | None = None, world_size: int | None = None, remainder: str = "pad",
                 **kwargs) -> ResumableLoader:
    """A resumable DataLoader of this rank's batches, read and built by its workers
    (:class:`ScenePatchStream`; ``state_dict()`` / ``load_state_dict()`` resume mid-epoch).

    Pass :class:`CloudMaskPatches` (``shuffle``, ``seed``, ``mix``, ``rank``, ``world_size`` and
    ``remainder`` configure the stream) or a :class:`ScenePatchStream` (its own options are
    kept; only ``batch_size`` and ``drop_last`` are applied). Call ``set_epoch`` on the
    returned loader each epoch. Extra ``kwargs`` go to the DataLoader.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers:
        kwargs.setdefault("multiprocessing_context", worker_context())
    if isinstance(data, ScenePatchStream):
        stream = data.with_batches(batch_size, drop_last)
    else:
        stream = ScenePatchStream(data, seed, batch_size, shuffle=shuffle, mix=mix, rank=rank, world_size=world_size,
                                  remainder=remainder, drop_last=drop_last)
    return ResumableLoader(stream, num_workers, **kwargs)


def read_scene(location: StoreLocation | str, scene: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole normalised scene ``(9, H, W)`` and its mask ``(H, W)`` (for inference)."""
    store = zarr_handle(location).get()
    _, _, h, w = store["image"].shape
    return read_window(store, scene, slice(0, h), slice(0, w))
