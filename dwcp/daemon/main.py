"""`dwcp daemon --config FILE`: what systemd runs (Type=notify)."""

from __future__ import annotations

import logging
import mmap
import os
import signal
import threading
import time

import dwcp
from dwcp.config import Config
from dwcp.storage import ObjectStore
from dwcp.transport.sender import Sender
from dwcp.transport.server import DataServer

from .control import ControlServer
from .sdnotify import notify

__all__ = ["Daemon", "run"]

log = logging.getLogger("dwcp.daemon")


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        os.makedirs(config.storage.data_dir, mode=0o700, exist_ok=True)
        self.store = ObjectStore(config.storage.data_dir, keep_versions=config.storage.keep_versions)
        self.sent = ObjectStore(os.path.join(config.storage.data_dir, "sent"), keep_versions=2)
        self.server = DataServer(config, store=self.store)
        self.control = ControlServer(config.control_socket, self.handle)
        self.sender = Sender(config.transport, config.security, node_id=config.node.id, baselines=self.sent)
        self.started = time.time()
        self._stop = threading.Event()
        self.sends_ok = 0
        self.sends_failed = 0

    def start(self) -> None:
        host, port = self.server.start()
        self.control.start()
        log.info("dwcp %s daemon %s up: data port %s:%d, control %s, backend %s",
                 dwcp.__version__, self.config.node.id, host, port, self.config.control_socket,
                 dwcp.backend)  # fmt: skip

    def status(self) -> dict:
        host, port = self.server.address
        return {
            "ok": True, "node": self.config.node.id, "version": dwcp.__version__, "backend": dwcp.backend,
            "data_port": f"{host}:{port}", "tls": not self.config.security.plaintext,
            "uptime_s": time.time() - self.started, "transfers": self.server.transfers(),
            "server": self.server.stats_snapshot(), "sends_ok": self.sends_ok, "sends_failed": self.sends_failed,
            "keys": len(self.store.keys()),
        }  # fmt: skip

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "status":
            return self.status()
        if op == "send":
            host, port = parse_hostport(str(req["to"]))
            path = str(req["path"])
            streams = req.get("streams")
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) if size else None
            try:
                stats = self.sender.send(m if m is not None else b"", host, port, str(req["key"]),
                                         streams=None if streams in (None, "auto") else int(streams),
                                         rate_limit_bytes_per_s=req.get("rate"))  # fmt: skip
                self.sends_ok += 1
            except Exception:
                self.sends_failed += 1
                raise
            finally:
                if m is not None:
                    m.close()
            return {"ok": True, **stats}
        if op == "stop":
            self._stop.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def wait(self) -> None:
        wd_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        interval = wd_usec / 2e6 if wd_usec else 5.0
        while not self._stop.wait(interval):
            if wd_usec:
                notify("WATCHDOG=1")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        notify("STOPPING=1")
        self.control.close()
        self.server.close()


def run(config: Config) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    d = Daemon(config)
    d.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: d.stop())
    notify("READY=1", f"STATUS=serving on {d.server.address[0]}:{d.server.address[1]}")
    try:
        d.wait()
    finally:
        d.close()
    return 0
