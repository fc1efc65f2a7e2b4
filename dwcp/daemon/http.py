"""The daemon's HTTP endpoint: /metrics (Prometheus), /healthz, /readyz.

A small threaded server on ``listen.metrics_host:metrics_port`` (loopback by
default; it exposes counts, never data or keys).  Anything but a GET of
those three paths is a 404/405; a malformed request is answered by
http.server with a 400 and never reaches dwcp.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from dwcp.errors import bind_error

__all__ = ["OpsHTTPServer"]

log = logging.getLogger("dwcp.http")

Probe = Callable[[], tuple[int, dict]]


class OpsHTTPServer:
    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, healthz: Probe, readyz: Probe
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "dwcp"
            sys_version = ""  # do not tell the world the Python version
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args) -> None:  # http.server logs to stderr by default
                log.debug("%s %s", self.address_string(), fmt % args)

            def _send(self, code: int, body: bytes, ctype: str, encoding: str | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                if encoding:
                    self.send_header("Content-Encoding", encoding)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":  # OpenMetrics when asked (Accept), gzip when accepted
                        encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                        text = encoder(outer.registry)
                        gz = "gzip" in self.headers.get("Accept-Encoding", "")
                        self._send(200, gzip.compress(text) if gz else text, ctype, "gzip" if gz else None)
                    elif path in ("/healthz", "/readyz"):
                        code, body = (outer.healthz if path == "/healthz" else outer.readyz)()
                        self._send(code, json.dumps(body).encode() + b"\n", "application/json")
                    else:
                        self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")
                except Exception:
                    log.exception("serving %s", path)
                    self._send(500, b"internal error\n", "text/plain")

            do_HEAD = do_GET

            def do_POST(self) -> None:
                self._send(405, b"GET only\n", "text/plain")

            do_PUT = do_DELETE = do_POST

        self.registry, self.healthz, self.readyz = registry, healthz, readyz
        try:
            self._srv = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise bind_error("listen.metrics_port", host, port, exc) from exc
        self._srv.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._srv.server_address[:2]  # type: ignore[return-value]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._srv.serve_forever, name="dwcp-http", daemon=True)
        self._thread.start()
        log.info("metrics and health on http://%s:%d/", *self.address)

    def close(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever(): only if it ran
            self._srv.shutdown()
            self._thread = None
        self._srv.server_close()
