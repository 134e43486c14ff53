"""Preflight of a Dask cluster before a conversion or subset writes anything.

On a cluster we did not start, every node must import the same scibench-data, see the
sources and see (and write) the destination at the same URL with the same storage options.
Without a check, each of these fails late and misleadingly: the scheduler cannot deserialize
the task graph, a product invisible on a worker reads as a broken product, a destination
invisible on a worker is a ``GroupNotFoundError`` after the store's metadata was written.
:func:`preflight` checks all of it in one round trip, before any write, and raises one line
that names the node that cannot.

The functions run on the nodes are module-level, with their imports inside them, so that a
node that cannot import this module is itself reported (the error is the import's).
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Seconds to wait for the first worker of a cluster that has none yet (e.g. dask-jobqueue jobs queued).
WAIT_FOR_WORKERS_S = 60.0


class PreflightError(RuntimeError):
    """A node of the cluster cannot run the job; the message names it."""


@dataclass(frozen=True)
class Probe:
    """What every worker checks: one source file to read, and a destination to see and write.

    ``source``/``dest_probe``: URLs (``/abs/path`` or ``s3://...``) opened with the storage
    options given. ``dest_probe`` is a small file this machine wrote beside the store (not in
    it); each worker reads it back and writes and deletes its own beside it."""

    source: str | None = None
    source_storage_options: dict[str, Any] = field(default_factory=dict)
    dest_probe: str | None = None
    dest_storage_options: dict[str, Any] = field(default_factory=dict)
    token: bytes = b""


def code_identity() -> str:
    """``VERSION (code DIGEST)`` of the scibench_data this process imports: the version string and
    a sha256 over the package's Python files (a stale checkout with the same version differs)."""
    # runs on a node: imports inside, so a node that cannot import them reports it (module docstring)
    import hashlib
    from pathlib import Path

    import scibench_data

    root = Path(scibench_data.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{getattr(scibench_data, '__version__', '?')} (code {digest.hexdigest()[:12]})"


def check_node(probe: Probe) -> dict[str, str]:
    """Run on a node: its scibench-data identity and, per failed check, the problem in words."""
    # runs on a node: imports inside (module docstring)
    import fsspec

    out = {"identity": code_identity()}
    if probe.source:
        try:
            fs, path = fsspec.core.url_to_fs(probe.source, **probe.source_storage_options)
            with fs.open(path, "rb") as f:
                f.read(1)
        except Exception as err:  # noqa: BLE001 - reported by node
            out["source"] = f"cannot read the source {probe.source} ({type(err).__name__}: {_one_line(err)})"
    if probe.dest_probe:
        try:
            fs, path = fsspec.core.url_to_fs(probe.dest_probe, **probe.dest_storage_options)
            if fs.cat_file(path) != probe.token:
                raise FileNotFoundError("it holds other bytes")
        except Exception as err:  # noqa: BLE001
            out["dest"] = (f"cannot see the destination: the probe {probe.dest_probe} written by the client is not "
                           f"visible there ({type(err).__name__}: {_one_line(err)})")
        else:
            own = f"{path}.{uuid.uuid4().hex[:8]}"
            try:
                fs.pipe_file(own, b"scibench-data preflight")
                fs.rm_file(own)
            except Exception as err:  # noqa: BLE001
                out["dest"] = f"cannot write the destination beside {probe.dest_probe} ({type(err).__name__}: " \
                              f"{_one_line(err)})"
    return out


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def problems(identity: str, scheduler: Mapping[str, str] | str, workers: Mapping[str, Any]) -> list[str]:
    """Pure: one line per node that cannot run the job. ``scheduler``: its :func:`check_node` dict
    or the error it raised; ``workers``: address -> its dict or the exception it raised."""
    lines = []
    if isinstance(scheduler, str):
        lines.append(f"the scheduler cannot run scibench-data's check ({scheduler}); install this scibench-data "
                     "on the scheduler too (it deserializes the tasks)")
    elif scheduler.get("identity") != identity:
        lines.append(f"the scheduler imports scibench-data {scheduler.get('identity')}, this machine {identity}")
    for address, result in sorted(workers.items()):
        if not isinstance(result, Mapping):
            lines.append(f"worker {address} cannot run scibench-data's check ({type(result).__name__}: "
                         f"{_one_line(result)}); install this scibench-data on every worker")
            continue
        if result.get("identity") != identity:
            lines.append(f"worker {address} imports scibench-data {result.get('identity')}, this machine {identity}")
        lines += [f"worker {address} {result[k]}" for k in ("source", "dest") if k in result]
    return lines


def _dest_probe(dest: Any) -> tuple[str, Any, Any]:
    """(probe URL beside the store, its filesystem and path); the store itself is not touched."""
    fs, root = dest.fs, dest.root.rstrip("/")
    parent, name = posixpath.split(root)
    path = posixpath.join(parent, f".{name}.scibench-preflight-{uuid.uuid4().hex[:12]}")
    return fs.unstrip_protocol(path) if not dest.is_local else path, fs, path


def preflight(scheduler: str, *, source: str | None = None, source_storage_options: Mapping[str, Any] | None = None,
              dest: Any = None) -> dict[str, int]:
    """Connect to the scheduler at ``scheduler`` and check, before anything is written, that the
    scheduler and every worker import the same scibench-data as this machine, that every worker
    can read ``source`` (one file, a URL) and can see and write the destination ``dest`` (a
    :class:`~scibench_data.storage.store.location.StoreLocation`). Raises :class:`ConnectionError` for
    an unreachable scheduler (:class:`~scibench_data.parallel.SchedulerUnreachableError`) and :class:`PreflightError` naming the first node that cannot (and
    how many more); returns the workers' thread counts."""
    # here: the nodes import this module with nothing else of ours
    from scibench_data.parallel import connect

    identity = code_identity()
    client = connect(scheduler)
    written = None
    try:
        if not client.scheduler_info().get("workers"):
            try:
                client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
            except TimeoutError:
                raise PreflightError(f"the dask scheduler at {scheduler} has no worker "
                                     f"(waited {WAIT_FOR_WORKERS_S:.0f} s)") from None
        probe = Probe(source=source, source_storage_options=dict(source_storage_options or {}))
        if dest is not None:
            url, fs, written = _dest_probe(dest)
            token = uuid.uuid4().hex.encode()
            try:
                fs.makedirs(posixpath.dirname(written), exist_ok=True)
                fs.pipe_file(written, token)
            except Exception as err:  # noqa: BLE001
                written = None
                raise PreflightError(f"this machine cannot write beside the destination {dest.url} "
                                     f"({type(err).__name__}: {_one_line(err)})") from None
            probe = Probe(source=probe.source, source_storage_options=probe.source_storage_options, dest_probe=url,
                          dest_storage_options=dict(dest.options), token=token)
        try:
            on_scheduler: Mapping[str, str] | str = client.run_on_scheduler(check_node, Probe())
        except Exception as err:  # noqa: BLE001 - the scheduler could not import or run the check
            on_scheduler = f"{type(err).__name__}: {_one_line(err)}"
        on_workers = client.run(check_node, probe, on_error="return")
        found = problems(identity, on_scheduler, on_workers)
        if found:
            more = f" (and {len(found) - 1} more: {'; '.join(found[1:3])}{' ...' if len(found) > 3 else ''})" \
                if len(found) > 1 else ""
            raise PreflightError(f"preflight of the dask cluster at {scheduler}: {found[0]}{more}")
        return dict(client.nthreads())
    finally:
        if written is not None and dest is not None:
            try:
                dest.fs.rm_file(written)
            except OSError:
                pass
        client.close()


def preflight_products(scheduler: str, fs: Any, products: list, source_storage_options: Mapping[str, Any],
                       dest: Any) -> None:
    """:func:`preflight` for a conversion on an existing cluster (``scheduler`` an address; nothing
    to check for ``threads``, ``sync`` or a ``local-cluster`` we start): every worker reads the
    first file of the first product and sees and writes ``dest``."""
    # as in preflight: not at the top, the nodes import this module with nothing else of ours
    from scibench_data.parallel import is_address

    if not is_address(scheduler):
        return
    files = products[0].files(fs) if products else []
    preflight(scheduler, source=fs.unstrip_protocol(files[0]) if files else None,
              source_storage_options=source_storage_options, dest=dest)
