"""An emulated network link in front of a loopback server: bandwidth and round-trip time.

On loopback, copying a data set down costs almost nothing, so "staging" cannot be compared
there. This TCP proxy adds what a real link has: every request reaches the server ``rtt``
later (per connection, so concurrent requests overlap as on a real network), and all
responses together share ``rate`` bytes per second (a token bucket). Both loaders of a
comparison go through the same link.

    python benchmarks/_link.py --target 127.0.0.1:PORT --rate-mbit 1000 --rtt-ms 10

prints ``http://127.0.0.1:<port>`` on its first line, then serves until killed. Run as its
own process, so that its work does not share a GIL with the loaders it carries.

It counts the bytes it carries (:class:`LinkCounters`: the responses' bytes as they leave the
link towards the client, the requests' bytes towards the server, connections opened). On
``SIGUSR1`` it prints them as one JSON line on stdout (:func:`read_counters` asks for it), so a
benchmark can measure what crossed the link between two moments, not what its loader used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


class TokenBucket:
    """``rate`` bytes per second shared by every response, bursts up to ``burst`` bytes."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.t = burst, time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self.lock:  # first come, first served: a fair share of the link
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
                self.t = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


@dataclass
class LinkCounters:
    """What the link carried so far: ``down_bytes`` server -> client (the responses), ``up_bytes``
    client -> server (the requests), and the connections it opened to the server."""

    down_bytes: int = 0
    up_bytes: int = 0
    connections: int = 0

    def add_down(self, n: int) -> None:
        self.down_bytes += n

    def add_up(self, n: int) -> None:
        self.up_bytes += n


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                bucket: TokenBucket | None, count: Callable[[int], None] | None = None) -> None:
    try:
        while data := await reader.read(64 * 1024):
            if delay:
                await asyncio.sleep(delay)
            if bucket is not None:
                await bucket.take(len(data))
            writer.write(data)
            if count is not None:
                count(len(data))  # through the bucket and handed on: carried by the link
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def start(target: tuple[str, int], rate_bytes: float, rtt: float, port: int = 0,
                counters: LinkCounters | None = None) -> asyncio.Server:
    """The link, listening on 127.0.0.1:``port`` (0: any free port), counting into ``counters``."""
    bucket = TokenBucket(rate_bytes, burst=max(256 * 1024, rate_bytes * 0.01)) if rate_bytes else None
    counters = counters if counters is not None else LinkCounters()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        counters.connections += 1
        await asyncio.gather(_pump(client_r, up_w, rtt, None, counters.add_up),
                             _pump(up_r, client_w, 0.0, bucket, counters.add_down))

    return await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)


async def serve(target: tuple[str, int], rate_bytes: float, rtt: float, port: int = 0) -> None:
    """Run the link until killed: its URL on the first line of stdout, its counters on ``SIGUSR1``."""
    counters = LinkCounters()
    server = await start(target, rate_bytes, rtt, port, counters)
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, lambda: print(json.dumps(asdict(counters)), flush=True))
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def read_counters(proc: subprocess.Popen) -> LinkCounters:
    """The counters of a link running as ``proc`` (started with ``stdout=PIPE, text=True`` and its
    URL line already read): sends ``SIGUSR1`` and reads the JSON line it prints."""
    proc.send_signal(signal.SIGUSR1)
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if not line:
        raise RuntimeError(f"the link process {proc.pid} ended without reporting its counters")
    return LinkCounters(**json.loads(line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", required=True, help="host:port of the server behind the link")
    ap.add_argument("--rate-mbit", type=float, default=1000.0, help="link bandwidth, Mbit/s (0: unlimited)")
    ap.add_argument("--rtt-ms", type=float, default=10.0, help="round-trip time added to each request, ms")
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    asyncio.run(serve((host, int(port)), args.rate_mbit * 1e6 / 8, args.rtt_ms / 1e3))


if __name__ == "__main__":
    main()
