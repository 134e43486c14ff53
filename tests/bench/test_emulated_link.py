"""benchmarks/_link.py counts the bytes it carries (what the link-throughput benchmark reports)."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys
import threading
from pathlib import Path

LINK_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "_link.py"
_spec = importlib.util.spec_from_file_location("_emulated_link", LINK_PY)
assert _spec is not None and _spec.loader is not None
link = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = link  # dataclasses look their module up there
_spec.loader.exec_module(link)

REQUEST = b"GET /bucket/key HTTP/1.1\r\n\r\n"


async def _exchange(port: int, sizes: list[int], rate: float) -> tuple[list[int], object]:
    """A server that answers each connection's request with ``sizes[i]`` bytes, behind a link;
    one client connection per size. Returns the bytes each client received and the link's counters."""
    replies = iter(sizes)

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"x" * next(replies))
        await w.drain()
        w.close()

    target = await asyncio.start_server(answer, "127.0.0.1", 0)
    counters = link.LinkCounters()
    proxy = await link.start(("127.0.0.1", target.sockets[0].getsockname()[1]), rate, 0.001, port, counters)
    got = []
    async with target, proxy:
        for _ in sizes:
            r, w = await asyncio.open_connection("127.0.0.1", proxy.sockets[0].getsockname()[1])
            w.write(REQUEST)
            await w.drain()
            got.append(len(await r.read()))
            w.close()
        await asyncio.sleep(0.05)  # the proxy's side of the last connection closes
    return got, counters


def test_link_counts_every_byte_it_carries_each_way() -> None:
    sizes = [0, 1, 70_000, 300_000]  # more than one 64 KiB read and more than the bucket's burst
    got, counters = asyncio.run(_exchange(0, sizes, rate=50e6))
    assert got == sizes
    assert counters.down_bytes == sum(sizes)
    assert counters.up_bytes == len(REQUEST) * len(sizes)
    assert counters.connections == len(sizes)


def test_link_process_reports_its_counters_on_request() -> None:
    """The benchmark's way: the link as its own process, counters read with SIGUSR1 between transfers."""
    payload = b"y" * 200_000
    server = socket.create_server(("127.0.0.1", 0))

    def serve_twice() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(payload)

    t = threading.Thread(target=serve_twice, daemon=True)
    t.start()
    proc = subprocess.Popen([sys.executable, str(LINK_PY), "--target", f"127.0.0.1:{server.getsockname()[1]}",
                             "--rate-mbit", "100", "--rtt-ms", "1"], stdout=subprocess.PIPE, text=True)
    try:
        host, port = proc.stdout.readline().strip().removeprefix("http://").split(":")  # type: ignore[union-attr]
        before = link.read_counters(proc)
        for _ in range(2):
            with socket.create_connection((host, int(port))) as c:
                c.sendall(REQUEST)
                received = b""
                while chunk := c.recv(65536):
                    received += chunk
            assert received == payload
        after = link.read_counters(proc)
    finally:
        proc.terminate()
        proc.wait(10)
        server.close()
    assert (before.down_bytes, before.up_bytes, before.connections) == (0, 0, 0)
    assert after.down_bytes == 2 * len(payload)
    assert after.up_bytes == 2 * len(REQUEST)
    assert after.connections == 2
