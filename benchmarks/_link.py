"""An emulated network link in front of a loopback server: bandwidth and round-trip time.

On loopback, copying a data set down costs almost nothing, so "staging" cannot be compared
there. This TCP proxy adds what a real link has: every request reaches the server ``rtt``
later (per connection, so concurrent requests overlap as on a real network), and all
responses together share ``rate`` bytes per second (a token bucket). Both loaders of a
comparison go through the same link.

    python benchmarks/_link.py --target 127.0.0.1:PORT --rate-mbit 1000 --rtt-ms 10

prints ``http://127.0.0.1:<port>`` on its first line, then serves until killed. Run as its
own process, so that its work does not share a GIL with the loaders it carries.
"""

from __future__ import annotations

import argparse
import asyncio
import time


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


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                bucket: TokenBucket | None) -> None:
    try:
        while data := await reader.read(64 * 1024):
            if delay:
                await asyncio.sleep(delay)
            if bucket is not None:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(target: tuple[str, int], rate_bytes: float, rtt: float, port: int = 0) -> None:
    bucket = TokenBucket(rate_bytes, burst=max(256 * 1024, rate_bytes * 0.01)) if rate_bytes else None

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, up_w, rtt, None), _pump(up_r, client_w, 0.0, bucket))

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


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
