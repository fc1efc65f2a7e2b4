"""dwcp as a library: send, fetch and run a daemon from Python, as the CLI does.

    import dwcp

    cfg = dwcp.load_config("/etc/dwcp/dwcp.toml")          # or None: plaintext, defaults
    report = dwcp.send("vm.img", "10.0.0.2:7700", "vm/42", config=cfg)
    report = dwcp.send(numpy_array, "cluster", "vm/42", config=cfg)   # replicated per [cluster]
    dwcp.fetch("vm/42", "vm.img", source="10.0.0.2:7700", config=cfg)
    with dwcp.Daemon(cfg) as d:                               # a daemon in this process
        ...

Every function raises the typed errors of ``dwcp.errors`` (``dwcp.errors.exit_code`` maps one to
the CLI's exit code); reports are the CLI's ``--json`` objects.
"""

from __future__ import annotations

import os
from typing import Any

from .config import Config, load_toml
from .errors import ConfigError

__all__ = ["load_config", "send", "fetch", "Daemon"]


def load_config(path: str | os.PathLike[str]) -> Config:
    """A config file, validated (ConfigError lists every problem)."""
    return load_toml(os.fspath(path))


def _config(config: Config | None) -> Config:
    if config is not None:
        return config
    from .config import from_dict

    return from_dict({"security": {"plaintext": True}, "storage": {"data_dir": "/tmp/dwcp"}})


def send(data: Any, to: str, key: str, *, config: Config | None = None, streams: int | None = None,
         rate_bytes_per_s: float | None = None, base: str | os.PathLike[str] | None = None,
         state_dir: str | None = None) -> dict:  # fmt: skip
    """Send ``data`` -- a path, or any contiguous buffer (bytes, mmap, numpy array; never copied) -- as
    ``key`` to ``to``: ``HOST:PORT``, or with ``config``'s [cluster] a peer id, ``region:NAME`` or
    ``cluster`` (replicated: ``replicas`` copies, ``ack``).  ``config`` None: plaintext with defaults
    (a test cluster); otherwise its TLS identity, transport and codec settings.  ``base``: a previous
    version you keep (a delta against it); ``state_dir``: where sent versions are kept as the next
    baselines (default: <data_dir>/sent with a config, none without).  Returns the report."""
    from .cluster.node import ClusterView, parse_target
    from .storage import ObjectStore
    from .transport.sender import Sender
    from .transport.source import FileSource

    cfg = _config(config)
    baselines = (
        ObjectStore(state_dir or os.path.join(cfg.storage.data_dir, "sent")) if config or state_dir else None
    )
    sender = Sender(cfg.transport, cfg.security, node_id=cfg.node.id, baselines=baselines, codec=cfg.codec)
    src = FileSource.open(os.fspath(data)) if isinstance(data, str | os.PathLike) else data
    kw: dict[str, Any] = {"streams": streams, "rate_limit_bytes_per_s": rate_bytes_per_s, "base": base}
    try:
        kind, _ = parse_target(to)
        if kind == "addr":
            host, _, port = to.rpartition(":")
            return sender.send(src, host.strip("[]"), int(port), key, **kw).to_json()
        if not cfg.cluster.peers:
            raise ConfigError(f"to {to!r}: a cluster target needs a config with [cluster] peers")
        return ClusterView(cfg.cluster, cfg.node).send(sender, src, key, to, **kw).to_json()
    finally:
        if isinstance(src, FileSource):
            src.close()


def fetch(key: str, out: str | os.PathLike[str], *, source: str, config: Config | None = None,
          version: str | None = None) -> dict:  # fmt: skip
    """Fetch ``key`` (its latest version, or ``version``'s digest) from the daemon at ``source``
    (HOST:PORT) into ``out``: verified, then renamed into place; an interrupted fetch resumes on the
    next call.  Returns the report."""
    from .transport.fetch import fetch as _fetch

    cfg = _config(config)
    host, _, port = source.rpartition(":")
    digest = bytes.fromhex(version) if version else None
    return _fetch(key, host.strip("[]"), int(port), os.fspath(out), cfg.transport, cfg.security,
                  node_id=cfg.node.id, digest=digest)  # fmt: skip


class Daemon:
    """A dwcp daemon in this process (``dwcp daemon`` without the signal handling): its data port,
    control socket, metrics, consensus and background work start on ``start()`` (or ``with``), and
    stop on ``close()``.  ``address`` is its data port; ``status()`` what `dwcp status` shows."""

    def __init__(self, config: Config) -> None:
        from .daemon.main import Daemon as _Daemon

        self._d = _Daemon(config)

    def start(self) -> Daemon:
        self._d.start()
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self._d.server.address

    def status(self) -> dict:
        return self._d.status()

    def close(self) -> None:
        self._d.close()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
