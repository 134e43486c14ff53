"""A local S3-compatible server (``moto_server``) for tests, benchmarks and demos.

Started on 127.0.0.1 on a free port as a subprocess and stopped by its process,
as zarr and s3fs do in their own test suites.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(timeout: float = 30.0, log: str | None = None) -> Iterator[str]:
    """Yield the endpoint URL of a fresh in-memory ``moto_server``; with ``log``, its request log
    (one line per request answered) goes to that file."""
    exe = shutil.which("moto_server")
    if exe is None:
        raise RuntimeError("moto_server is not on PATH: pip install 'moto[server]'")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    out = open(log, "wb") if log else None  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL if out is None else out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out is not None:
            out.close()


def storage_options(endpoint: str) -> dict:
    """s3fs options for a moto endpoint (moto accepts any key and secret)."""
    return {"key": "testing-key", "secret": "testing-secret", "client_kwargs": {"endpoint_url": endpoint}}
