"""A fault-injecting TCP proxy for adversity tests (loopback only).

``FaultProxy(target)`` listens on 127.0.0.1 (port 0) and relays every
connection to ``target``; tests change its behaviour while it runs:

* ``corrupt_after(n, conn=k)``: flip one bit at client->server offset n of
  the k-th connection (1-based; a corrupted chunk);
* ``cut_after(n, conn=k)``: close the k-th connection (both ways) after it
  relayed n client->server bytes (a stream dies mid-transfer); with
  ``replies=True``, n server->client bytes (a fetch dies mid-object);
* ``stall_after(n, conn=k)``: stop relaying on the k-th connection after n
  bytes, keeping its sockets open (a stalled stream);
* ``pause()`` / ``resume()``: stop forwarding on every connection.

Everything is bounded: relays stop when either side closes or ``close()``
is called, which joins every thread.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

__all__ = ["FaultProxy"]


@dataclass
class _Fault:
    kind: str  # "corrupt" | "cut" | "stall" | "blackhole"
    at: int
    conn: int
    replies: bool = False  # on the server->client direction


class FaultProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind(("127.0.0.1", 0))
        self._ls.listen(64)
        self.address = self._ls.getsockname()
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._closed = False
        self._running = threading.Event()
        self._running.set()
        self.connections = 0
        self.faults_fired = 0
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    # -- fault control -------------------------------------------------------
    def corrupt_after(self, n: int, conn: int) -> None:
        with self._lock:
            self._faults.append(_Fault("corrupt", n, conn))

    def cut_after(self, n: int, conn: int, *, replies: bool = False) -> None:
        with self._lock:
            self._faults.append(_Fault("cut", n, conn, replies))

    def stall_after(self, n: int, conn: int) -> None:
        with self._lock:
            self._faults.append(_Fault("stall", n, conn))

    def blackhole_after(self, n: int, conn: int) -> None:
        """Like stall, but the far side never learns the near side closed (a FIN stuck behind
        unacknowledged data, as when TCP is in RTO backoff): only the proxy's close releases it."""
        with self._lock:
            self._faults.append(_Fault("blackhole", n, conn))

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def _take_fault(self, conn: int, replies: bool = False) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.conn == conn and f.replies == replies:
                    self._faults.remove(f)
                    return f
        return None

    # -- relaying ----------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self._ls.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(self.target, timeout=10)
                s.settimeout(None)
            except OSError:
                c.close()
                continue
            self.connections += 1
            fault, back = self._take_fault(self.connections), self._take_fault(self.connections, True)
            with self._lock:
                self._socks += [c, s]
            for src, dst, f in ((c, s, fault), (s, c, back)):
                t = threading.Thread(target=self._pipe, args=(src, dst, f), daemon=True)
                t.start()
                with self._lock:
                    self._threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket, fault: _Fault | None) -> None:
        relayed = 0
        buf = bytearray(1 << 16)
        mv = memoryview(buf)
        try:
            while not self._closed:
                n = src.recv_into(mv)
                if n == 0:
                    break
                self._running.wait()
                chunk = mv[:n]
                if fault is not None and relayed + n > fault.at:
                    k = fault.at - relayed
                    if fault.kind == "corrupt":
                        buf[k] ^= 0x10
                        self.faults_fired += 1
                        fault = None
                    elif fault.kind == "cut":
                        dst.sendall(chunk[:k])
                        self.faults_fired += 1
                        break
                    else:  # stall/blackhole: swallow everything from here on, keep both sockets open
                        dst.sendall(chunk[:k])
                        self.faults_fired += 1
                        while not self._closed and src.recv_into(mv):
                            pass
                        if fault.kind == "blackhole":
                            while not self._closed:
                                time.sleep(0.05)
                        return
                dst.sendall(chunk)
                relayed += n
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._running.set()
        try:
            self._ls.shutdown(socket.SHUT_RDWR)  # wakes the accept() a close alone would not (Linux)
        except OSError:
            pass
        try:
            self._ls.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in threads:
            t.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
