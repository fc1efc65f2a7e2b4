"""The local control API: one JSON request per line on a Unix socket (mode 0600).

Requests: {"op": "status"}, {"op": "send", "path", "to", "key", "streams"?, "rate"?}, ...
(``dwcp.daemon.main.Daemon.handle``).  A request may carry open file descriptors
(SCM_RIGHTS, at most ``MAX_FDS``) with its line: ``send`` reads the object from the
one the CLI opened, with the CLI user's permissions, rather than opening the path.
Each answer is one JSON object: {"ok": true, ...} or {"ok": false, "error": "..."}.
Only the local user who owns the data directory can connect (socket mode 0600).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence

__all__ = ["ControlServer", "request"]

log = logging.getLogger("dwcp.control")
MAX_REQUEST = 64 * 1024
MAX_FDS = 1


class ControlServer:
    """``handler(request, fds)`` answers each request; ``fds`` are the descriptors that came with it,
    which the handler owns (the server closes none of them)."""

    def __init__(self, path: str, handler: Callable[[dict, list[int]], dict]) -> None:
        self.path = path
        self.handler = handler
        self._sock: socket.socket | None = None
        self._closing = False

    def start(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        s.listen(16)
        self._sock = s
        threading.Thread(target=self._loop, name="dwcp-control", daemon=True).start()

    def close(self) -> None:
        self._closing = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _loop(self) -> None:
        assert self._sock is not None
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            fds: list[int] = []
            try:
                buf = b""
                while b"\n" not in buf:
                    more, got, flags, _addr = socket.recv_fds(conn, 4096, MAX_FDS)
                    fds += got
                    if len(fds) > MAX_FDS or flags & socket.MSG_CTRUNC:  # the kernel closed the rest
                        raise ValueError(f"at most {MAX_FDS} file descriptors per request")
                    if not more:
                        return
                    buf += more
                    if len(buf) > MAX_REQUEST:
                        raise ValueError("request too long")
                req = json.loads(buf.split(b"\n", 1)[0])
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                taken, fds = fds, []
                resp = self.handler(req, taken)
            except Exception as exc:  # one bad request must not stop the API
                from dwcp.errors import exit_code

                log.info("control request failed: %s", exc)
                resp = {"ok": False, "error": str(exc), "exit": exit_code(exc)}  # the CLI exits with it
            finally:
                for fd in fds:  # came with a request that was never handed over
                    os.close(fd)
            try:
                conn.sendall(json.dumps(resp).encode() + b"\n")
            except OSError:
                pass


def request(path: str, req: dict, timeout_s: float | None = None, *, fds: Sequence[int] = ()) -> dict:
    """Send one request (with ``fds``, which stay open here) to a daemon's control socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        line = json.dumps(req).encode() + b"\n"
        if fds:
            sent = socket.send_fds(s, [line], list(fds))
            if sent < len(line):
                s.sendall(line[sent:])
        else:
            s.sendall(line)
        buf = b""
        while b"\n" not in buf:
            more = s.recv(65536)
            if not more:
                break
            buf += more
    if not buf:
        raise ConnectionError(f"daemon at {path} closed the control connection without answering")
    return json.loads(buf)
