"""S3 pieces several test modules share: a client with its bucket, waiting on a running publish, and a
moto server whose requests a test can count."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

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


class LoggedS3Server:
    """A ``moto_server`` whose request log (werkzeug's one line per request, on stderr) is kept in a
    file, so a test can count what the server saw: ``requests()`` -> ``[(method, path), ...]``."""

    def __init__(self, folder: Path, env: dict | None = None) -> None:
        """``env``: extra environment for the server (``INITIAL_NO_AUTH_ACTION_COUNT=0`` makes moto
        check every request's credentials)."""
        import os

        from scibench_data.storage.distribution.local_s3 import free_port

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"moto-{self.port}.log"
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen([shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=self._out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not start on {self.endpoint}")

    def log_lines(self) -> list[str]:
        """Every logged line that quotes something (request lines and any other), unparsed: what a
        test searches for a secret that must never reach the server."""
        return [line for line in self.log.read_text(errors="replace").splitlines() if '"' in line]

    def request_lines(self) -> list[str]:
        """``METHOD /path?query`` of every S3 request logged so far (the server's own API excluded)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = _REQUEST_LINE.search(line)
            if m and not m.group(2).startswith("/moto-api"):
                out.append(f"{m.group(1)} {m.group(2)}")
        return out

    def requests(self) -> list[tuple[str, str]]:
        """(method, unquoted path without the query) of every request logged so far."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = _REQUEST_LINE.search(line)
            if m:
                out.append((m.group(1), urllib.parse.unquote(m.group(2).split("?", 1)[0])))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._out.close()


_REQUEST_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+"')


def tiny_cloudmask_store(base: Path, *, grid: tuple[int, int], tile: int, seed: int) -> Path:
    """Two synthetic hdf products of ``grid`` converted with ``tile`` chunks into ``base/s.zarr``."""
    from scibench_data.convert.cloudmask import CloudMaskConversion, convert_cloudmask
    from scibench_data.synthetic.cloudmask import SyntheticCloudMask, generate

    generate(base / "raw", "hdf", SyntheticCloudMask(n_products=2, grid=grid, seed=seed))
    dest = base / "s.zarr"
    if not convert_cloudmask(str(base / "raw"), str(dest), CloudMaskConversion(layout="hdf", tile=tile,
                                                                               progress=False)).ok:
        raise RuntimeError(f"the tiny test store {dest} did not convert")
    return dest


def publish_tiny(storage_options: dict, store: Path, url: str, *, public: bool = False):
    """``store`` published as ``cloudmask_ds1`` at ``url`` (``s3://bucket/prefix``; the bucket made if
    needed): the publish result (``.url`` is the version's store URL)."""
    from scibench_data.storage.distribution.publish import PublishOptions, publish

    bucket_client(storage_options, url.removeprefix("s3://").split("/", 1)[0])
    return publish("cloudmask_ds1", str(store), url, storage_options=storage_options,
                   options=PublishOptions(progress=False, public=public))
