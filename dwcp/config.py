"""One frozen, typed configuration, parsed once from TOML and CLI flags.

Sections mirror systemd/dwcp.toml.example; units are in the field names.
Validation happens here, in ``__post_init__``, with one clear ConfigError
per problem; nothing deeper in dwcp reads files or environment variables
for settings.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from dwcp.errors import ConfigError

__all__ = [
    "Config",
    "NodeConfig",
    "ListenConfig",
    "SecurityConfig",
    "StorageConfig",
    "TransportConfig",
    "load_toml",
    "from_dict",
]

MiB = 1 << 20


@dataclass(frozen=True)
class NodeConfig:
    id: str = "node"
    region: str = "default"

    def __post_init__(self) -> None:
        if not self.id or len(self.id) > 64 or not all(c.isalnum() or c in "._-" for c in self.id):
            raise ConfigError(f"node.id {self.id!r}: 1-64 characters of letters, digits, '.', '_' or '-'")


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    data_port: int = 7700  # 0 = any free port (tests)
    control_socket: str = ""  # default: <storage.data_dir>/control.sock
    max_connections: int = 256

    def __post_init__(self) -> None:
        if not 0 <= self.data_port <= 65535:
            raise ConfigError(f"listen.data_port {self.data_port} outside [0, 65535]")
        if self.max_connections < 1:
            raise ConfigError("listen.max_connections must be >= 1")


@dataclass(frozen=True)
class SecurityConfig:
    plaintext: bool = False  # only with this explicit setting does the data port run without TLS
    ca_cert: str = ""
    cert: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        if not self.plaintext and not (self.ca_cert and self.cert and self.key):
            raise ConfigError(
                "security: set ca_cert, cert and key for mutual TLS (see `dwcp certs`), "
                "or plaintext = true to run without authentication on purpose"
            )


@dataclass(frozen=True)
class StorageConfig:
    data_dir: str = "/var/lib/dwcp"
    keep_versions: int = 2
    partial_max_age_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if not self.data_dir:
            raise ConfigError("storage.data_dir must be set")
        if self.keep_versions < 2:
            raise ConfigError("storage.keep_versions must be >= 2 (the previous version is the next baseline)")


@dataclass(frozen=True)
class TransportConfig:
    min_streams: int = 1
    max_streams: int = 16
    chunk_size_bytes: int = 4 * MiB
    window_chunks: int = 2  # unacknowledged chunks per stream
    stall_timeout_s: float = 15.0  # no progress for this long = a dead stream
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0  # receiver side: a silent connection is closed
    max_stream_reconnects: int = 32
    rate_limit_bytes_per_s: float = 0.0  # 0 = no cap
    link_bytes_per_s: float = 0.0  # 0 = unknown (auto streams start at min_streams)
    per_stream_window_bytes: int = 4 * MiB
    congestion: str = "bbr"
    source_address: str = ""
    interface: str = ""
    compress_workers: int = 0  # 0 = one per CPU

    def __post_init__(self) -> None:
        if not 1 <= self.min_streams <= self.max_streams <= 256:
            raise ConfigError("transport: need 1 <= min_streams <= max_streams <= 256")
        cs = self.chunk_size_bytes
        if cs < 4096 or cs % 4096 or cs > 64 * MiB:
            raise ConfigError(f"transport.chunk_size_bytes {cs}: a multiple of 4096 in [4 KiB, 64 MiB]")
        if self.window_chunks < 1:
            raise ConfigError("transport.window_chunks must be >= 1")
        for name in ("stall_timeout_s", "connect_timeout_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"transport.{name} must be positive")
        if self.rate_limit_bytes_per_s < 0 or self.link_bytes_per_s < 0:
            raise ConfigError("transport rates must be >= 0")


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)  # mutual TLS unless told otherwise
    storage: StorageConfig = field(default_factory=StorageConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)

    @property
    def control_socket(self) -> str:
        return self.listen.control_socket or os.path.join(self.storage.data_dir, "control.sock")


_SECTIONS = {"node": NodeConfig, "listen": ListenConfig, "security": SecurityConfig, "storage": StorageConfig,
             "transport": TransportConfig}  # fmt: skip


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        f = known.get(k)
        if f is None:
            raise ConfigError(f"{where + '.' if where else ''}{k}: unknown setting")
        if cls is Config:
            kwargs[k] = _build(_SECTIONS[k], v, k)
            continue
        want = type(f.default) if f.default is not None else None
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if want is not None and not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ConfigError(f"{where}.{k}: expected {want.__name__ if want else '?'}, got {type(v).__name__}")
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None


def from_dict(data: dict) -> Config:
    return _build(Config, data, "")


def load_toml(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data)
