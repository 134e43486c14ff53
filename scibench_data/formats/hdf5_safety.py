"""Read an HDF5 file, never follow it.

An HDF5 (or netCDF4) file can make a reader fetch bytes from elsewhere: a dataset with
*external storage* reads a raw file named in the header (any local path, also when the HDF5
file itself came from S3), a *virtual dataset* maps other files' datasets, an *external
link* opens another file. A raw archive from someone else may carry any of these, so every
reader here calls :func:`refuse_indirection` on an open file before reading data: each is
refused with a :class:`~scibench_data.formats.SourceFormatError` naming the file and the
dataset. Only the header is read (no data), links are inspected without being followed.
"""

from __future__ import annotations

import posixpath

import h5py

from scibench_data.formats import SourceFormatError


def check_dataset(d: h5py.Dataset, path: str, name: str | None = None) -> h5py.Dataset:
    """``d`` itself if its bytes live in this file; external storage or a virtual dataset is refused."""
    name = name or d.name
    if d.is_virtual:
        sources = sorted({f"{m.file_name}:{m.dset_name}" for m in d.virtual_sources()})[:3]
        raise SourceFormatError(path, f"dataset {name!r} is a virtual dataset (maps {', '.join(sources)}); "
                                      "refusing to read data from other files")
    external = d.external
    if external:
        files = sorted({str(e[0]) for e in external})[:3]
        raise SourceFormatError(path, f"dataset {name!r} uses HDF5 external storage (raw file(s) "
                                      f"{', '.join(files)}); refusing to read data from other files")
    return d


def _refuse_external(path: str, name: str, link: object) -> None:
    if isinstance(link, h5py.ExternalLink):
        raise SourceFormatError(path, f"dataset {name!r} is an external link to {link.filename}:{link.path}; "
                                      "refusing to open other files")


def _check_soft(root: h5py.File, path: str, name: str, target: str) -> None:
    """Every link on a soft link's way (itself possibly through soft links) stays in this file."""
    pending = [(target, 0)]
    while pending:
        target, depth = pending.pop()
        if depth > 32:
            raise SourceFormatError(path, f"dataset {name!r}: soft links nest deeper than 32")
        here = "/"
        for part in [p for p in target.split("/") if p]:
            here = posixpath.join(here, part)
            link = root.get(here, getlink=True)
            _refuse_external(path, name, link)
            if isinstance(link, h5py.SoftLink):
                pending.append((posixpath.normpath(posixpath.join(posixpath.dirname(here), link.path)), depth + 1))
            if link is None:
                break


def refuse_indirection(group: h5py.Group, path: str) -> None:
    """Walk every link under ``group`` without following external ones; refuse external links,
    external storage and virtual datasets anywhere in the file. Soft links are resolved only
    inside the file; each object is visited once (hard-link cycles end).

    Iterative, with no closures and only integers remembered: h5py objects caught in reference
    cycles would be freed by the garbage collector in whatever thread runs it (e.g. fsspec's IO
    thread), which needs h5py's lock and deadlocks against a thread reading through fsspec."""
    root = group.file
    seen: set[int] = set()
    stack = [(group, group.name.rstrip("/"))]
    while stack:
        g, prefix = stack.pop()
        for key in g:
            name = f"{prefix}/{key}"
            link = g.get(key, getlink=True)
            _refuse_external(path, name, link)
            if isinstance(link, h5py.SoftLink):
                _check_soft(root, path, name, posixpath.normpath(posixpath.join(g.name, link.path)))
            obj = g.get(key)
            if obj is None:  # a dangling soft link: nothing to read
                continue
            ident = hash(obj.id)
            if ident in seen:
                continue
            seen.add(ident)
            if isinstance(obj, h5py.Dataset):
                check_dataset(obj, path, name)
            elif isinstance(obj, h5py.Group):
                stack.append((obj, name))
