"""A loopback TCP proxy that can be stopped and started again on the same port.

Stands in for an S3 server going away and coming back with its data: the
moto server behind it keeps running (moto keeps everything in memory, so a
restarted moto would be empty). ``stop`` closes the listening socket and cuts
every open connection mid-stream; ``start`` listens again on the same port.
``cut_next(n, after)`` makes the next ``n`` new connections break after the server
has sent ``after`` bytes (a response cut off in its body).
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0
        self._cuts: list[int] = []
        self.cuts_done = 0
        self._accepting = threading.Event()  # set when the accept loop has ended

    def cut_next(self, n: int, after: int) -> None:
        with self._lock:
            self._cuts = [after] * n

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> TcpProxy:
        if self._listener is not None:
            return self
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s
        self._accepting.clear()
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and cut the open ones (RST, as a crashed server would)."""
        s, self._listener = self._listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (close alone does not)
            except OSError:
                pass
            s.close()
            self._accepting.wait(5)
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            self._serve(listener)
        finally:
            self._accepting.set()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
                self.connections += 1
                cut = self._cuts.pop() if self._cuts else None
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, cut), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut: int | None = None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if cut is not None and sent + len(data) >= cut:
                    dst.sendall(data[:max(0, cut - sent)])
                    with self._lock:
                        self.cuts_done += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
