"""The local control API: one JSON request per line on a Unix socket (mode 0600).

Requests: {"op": "status"}, {"op": "send", "path", "to", "key", "streams"?, "rate"?}.
Each answer is one JSON object: {"ok": true, ...} or {"ok": false, "error": "..."}.
Only the local user who owns the data directory can connect (socket mode 0600).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable

__all__ = ["ControlServer", "request"]

log = logging.getLogger("dwcp.control")
MAX_REQUEST = 64 * 1024


class ControlServer:
    def __init__(self, path: str, handler: Callable[[dict], dict]) -> None:
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
            try:
                buf = b""
                while b"\n" not in buf:
                    more = conn.recv(4096)
                    if not more:
                        return
                    buf += more
                    if len(buf) > MAX_REQUEST:
                        raise ValueError("request too long")
                req = json.loads(buf.split(b"\n", 1)[0])
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                resp = self.handler(req)
            except Exception as exc:  # one bad request must not stop the API
                log.info("control request failed: %s", exc)
                resp = {"ok": False, "error": str(exc)}
            try:
                conn.sendall(json.dumps(resp).encode() + b"\n")
            except OSError:
                pass


def request(path: str, req: dict, timeout_s: float | None = None) -> dict:
    """Send one request to a daemon's control socket and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            more = s.recv(65536)
            if not more:
                break
            buf += more
    if not buf:
        raise ConnectionError(f"daemon at {path} closed the control connection without answering")
    return json.loads(buf)
