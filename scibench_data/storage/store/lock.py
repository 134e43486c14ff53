"""An exclusive writer lock kept inside a store (``_scibench/lock.json``).

Two conversions into one destination are refused rather than interleaved. A
lock left by a killed process on this host is recognised as stale and taken
over; a lock from another host must be removed by hand (``--break-lock``).

Acquisition and takeover are atomic, so of any number of racing processes
exactly one holds the lock:

* locally, every decision (create, read, take over, remove) is made while
  holding ``fcntl.flock`` on ``_scibench/lock.guard`` (a file never deleted,
  held for milliseconds; the kernel drops it if its holder dies), and the
  lock file is created with ``O_EXCL`` and replaced with a rename;
* on object storage, the lock is created with a conditional PUT
  (``If-None-Match: *``, s3fs ``mode="create"``) and a stale lock is taken
  over with ``If-Match`` on the ETag it was read with: a second taker's PUT
  fails because the object changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from scibench_data.storage.store.location import StoreLocation

LOCK_KEY = ("_scibench", "lock.json")
GUARD_KEY = ("_scibench", "lock.guard")


class StoreLockedError(RuntimeError):
    """Another writer holds the store."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def is_stale(owner: dict, host: str) -> bool:
    """A lock whose owner ran on ``host`` and is no longer running (pure apart from the pid probe)."""
    try:
        pid = int(owner.get("pid", -1))
    except (TypeError, ValueError):
        return False
    return owner.get("host") == host and pid > 0 and not _alive(pid)


def _locked_message(url: str, other: dict) -> str:
    return (f"{url} is locked by {other.get('operation', 'a writer')} (pid {other.get('pid')} on "
            f"{other.get('host')} since {other.get('since')}); wait for it, or pass --break-lock if that process is gone")


@contextlib.contextmanager
def _guard(location: StoreLocation) -> Iterator[None]:
    """Hold ``flock`` on the store's guard file (local stores) for the duration of one decision."""
    path = location.path(*GUARD_KEY)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _read_local(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {}


@dataclass
class WriterLock:
    location: StoreLocation
    operation: str = "write"
    held: bool = False
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def _owner(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "operation": self.operation, "token": self.token,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def acquire(self, break_lock: bool = False) -> None:
        """Take the lock, or a stale one (a dead process on this host), or any with ``break_lock``;
        else :class:`StoreLockedError` naming the holder."""
        if self.location.is_local:
            self._acquire_local(break_lock)
        else:
            self._acquire_remote(break_lock)
        self.held = True

    def _acquire_local(self, break_lock: bool) -> None:
        path = self.location.path(*LOCK_KEY)
        owner = self._owner()
        data = json.dumps(owner).encode()
        with _guard(self.location):
            other = _read_local(path)
            if other is not None and not (break_lock or is_stale(other, owner["host"])):
                raise StoreLockedError(_locked_message(self.location.url, other))
            tmp = f"{path}.{self.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            if other is None:
                try:
                    os.link(tmp, path)  # O_EXCL semantics: fails if a writer without the guard got there first
                except FileExistsError:
                    os.unlink(tmp)
                    raise StoreLockedError(_locked_message(self.location.url, _read_local(path) or {})) from None
                os.unlink(tmp)
            else:
                os.replace(tmp, path)  # the stale lock is replaced in one rename

    def _acquire_remote(self, break_lock: bool) -> None:
        fs, path = self.location.fs, self.location.path(*LOCK_KEY)
        owner = self._owner()
        data = json.dumps(owner).encode()
        for _ in range(3):
            try:
                fs.pipe_file(path, data, mode="create")  # If-None-Match: *
                return
            except FileExistsError:
                pass
            try:
                info = fs.info(path, refresh=True)
                other = json.loads(fs.cat_file(path))
            except FileNotFoundError:
                continue  # released meanwhile: try to create it again
            except (ValueError, UnicodeDecodeError):
                other = {}
            if not (break_lock or is_stale(other, owner["host"])):
                raise StoreLockedError(_locked_message(self.location.url, other))
            if self._replace_if_unchanged(path, data, info.get("ETag")):
                return
        raise StoreLockedError(f"could not take the lock of {self.location.url}: other writers keep taking it")

    def _replace_if_unchanged(self, path: str, data: bytes, etag: str | None) -> bool:
        """Overwrite the lock only if it still is the one read (``If-Match``); False if someone else changed it."""
        fs = self.location.fs
        if etag is None or not hasattr(fs, "split_path"):
            fs.pipe_file(path, data)  # no conditional overwrite on this store: best effort
            return True
        bucket, key, _ = fs.split_path(path)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)
        except (OSError, FileNotFoundError):  # 412 precondition failed (another taker won) or 404
            return False
        fs.invalidate_cache(path)
        return True

    def release(self) -> None:
        """Remove the lock if it is still ours (a lock broken and retaken by someone else is left alone)."""
        if not self.held:
            return
        path = self.location.path(*LOCK_KEY)
        if self.location.is_local:
            with _guard(self.location):
                if (_read_local(path) or {}).get("token") == self.token:
                    os.unlink(path)
        else:
            other = self.location.read_json(*LOCK_KEY) or {}
            if other.get("token") in (None, self.token):
                try:
                    self.location.fs.rm_file(path)
                except FileNotFoundError:
                    pass
        self.held = False

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def break_lock(location: StoreLocation) -> bool:
    """Remove a store's lock, whoever holds it (the user's explicit ``--break-lock``).

    Returns True if there was a lock to remove."""
    if location.is_local:
        with _guard(location):
            try:
                os.unlink(location.path(*LOCK_KEY))
                return True
            except FileNotFoundError:
                return False
    try:
        location.fs.rm_file(location.path(*LOCK_KEY))
        return True
    except FileNotFoundError:
        return False
