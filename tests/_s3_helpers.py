"""S3 pieces several test modules share: a client with its bucket, and waiting on a running publish."""

from __future__ import annotations

import subprocess
import time

import s3fs


def bucket_client(storage_options: dict, bucket: str) -> s3fs.S3FileSystem:
    """An s3fs client on the test server, with ``bucket`` created if it is not there yet."""
    fs = s3fs.S3FileSystem(**storage_options)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return fs


def wait_for_objects(fs: s3fs.S3FileSystem, prefix: str, at_least: int, proc: subprocess.Popen,
                     pause: float, timeout: float = 60) -> None:
    """Until ``at_least`` data objects (not ``_scibench/`` bookkeeping) exist under ``prefix``,
    or ``proc`` has ended, or ``timeout`` seconds passed; the caller asserts what it needs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len([p for p in fs.find(prefix, refresh=True) if "/_scibench/" not in p]) >= at_least:
            return
        time.sleep(pause)
