"""S3 pieces several test modules share: a client with its bucket, waiting on a running publish, and a
moto server whose requests a test can count."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
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


class LoggedMotoServer:
    """A ``moto_server`` of its own whose request log (werkzeug: one line per request) goes to a file,
    so a test can count the requests the server answered, by method and key."""

    def __init__(self, folder: Path) -> None:
        from scibench_data.storage.local_s3 import free_port

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"moto-{self.port}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 (the server writes to it until stop() closes it)
        self.proc = subprocess.Popen([shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start on {self.endpoint}") from None
                time.sleep(0.1)

    def requests(self) -> list[str]:
        """``METHOD /path?query`` of every S3 request answered so far (the server's own calls excluded)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = _REQUEST.search(line)
            if m and not m.group(2).startswith("/moto-api"):
                out.append(f"{m.group(1)} {m.group(2)}")
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


_REQUEST = re.compile(r'"([A-Z]+) (\S+) HTTP/')
