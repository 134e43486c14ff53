"""An exclusive writer lock kept inside a store (``_scibench/lock.json``).

Two conversions into one destination are refused rather than interleaved. A
lock left by a killed process on this host is recognised as stale and taken
over; a lock from another host must be removed by hand (``--break-lock``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

from scibench_data.storage.location import StoreLocation

LOCK_KEY = ("_scibench", "lock.json")


class StoreLockedError(RuntimeError):
    """Another writer holds the store."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class WriterLock:
    location: StoreLocation
    operation: str = "write"
    held: bool = False

    def _owner(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "operation": self.operation,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def acquire(self, break_lock: bool = False) -> None:
        path = self.location.path(*LOCK_KEY)
        owner = self._owner()
        if self.location.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            for _ in range(2):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    other = self.location.read_json(*LOCK_KEY) or {}
                    stale = other.get("host") == owner["host"] and not _alive(int(other.get("pid", -1)))
                    if stale or break_lock:
                        os.unlink(path)
                        continue
                    raise StoreLockedError(
                        f"{self.location.url} is locked by {other.get('operation', 'a writer')} "
                        f"(pid {other.get('pid')} on {other.get('host')} since {other.get('since')}); "
                        "wait for it, or pass --break-lock if that process is gone"
                    ) from None
                with os.fdopen(fd, "w") as f:
                    json.dump(owner, f)
                self.held = True
                return
            raise StoreLockedError(f"could not take the lock of {self.location.url}")
        # Object stores: write-if-absent where the server supports it, else check-then-write.
        fs = self.location.fs
        if fs.exists(path) and not break_lock:
            other = self.location.read_json(*LOCK_KEY) or {}
            raise StoreLockedError(
                f"{self.location.url} is locked by {other.get('operation', 'a writer')} (pid {other.get('pid')} "
                f"on {other.get('host')} since {other.get('since')}); pass --break-lock if that process is gone"
            )
        self.location.write_json(owner, *LOCK_KEY)
        self.held = True

    def release(self) -> None:
        if self.held:
            try:
                self.location.fs.rm_file(self.location.path(*LOCK_KEY))
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def break_lock(location: StoreLocation) -> bool:
    """Remove a store's lock, whoever holds it (the user's explicit ``--break-lock``).

    Returns True if there was a lock to remove."""
    try:
        location.fs.rm_file(location.path(*LOCK_KEY))
        return True
    except FileNotFoundError:
        return False
