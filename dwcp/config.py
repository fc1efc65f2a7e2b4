"""One frozen, typed configuration, parsed once from TOML and CLI flags.

Sections mirror systemd/dwcp.toml.example; units are in the field names.
Every section validates itself in ``__post_init__`` and reports *all* its
problems at once; ``from_dict`` gathers them over every section (unknown
settings and wrong types included) into one ConfigError whose ``problems``
lists one line per problem -- what ``dwcp check-config`` prints.  Nothing
deeper in dwcp reads files or environment variables for settings.

``reload_plan(old, new)`` says which differences a running daemon applies
live and which need a restart (see ``LIVE``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
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
    "CodecSettings",
    "HealthConfig",
    "LoggingConfig",
    "ClusterConfig",
    "PeerConfig",
    "ConsensusConfig",
    "LIVE",
    "load_toml",
    "from_dict",
    "reload_plan",
]

MiB = 1 << 20


class _Section:
    """Base of every section: ``problems()`` lists what is wrong, ``__post_init__`` raises them all."""

    SECTION = ""

    def problems(self) -> list[str]:
        return []

    PATHS: tuple[str, ...] = ()  # settings that name a file or directory: absolute when set

    def path_problems(self) -> list[str]:
        """A relative path would depend on the daemon's working directory."""
        return [f"{name} {v!r} must be an absolute path" for name in self.PATHS
                if isinstance(v := getattr(self, name), str) and v and not os.path.isabs(v)]  # fmt: skip

    def __post_init__(self) -> None:
        probs = self.problems() + self.path_problems()
        if probs:
            raise ConfigError(problems=[f"{self.SECTION}.{p}" for p in probs])


@dataclass(frozen=True)
class NodeConfig(_Section):
    SECTION = "node"
    id: str = "node"
    region: str = "default"
    latitude_deg: float = 0.0  # coordinates: geo-proximity routing (haversine)
    longitude_deg: float = 0.0

    def problems(self) -> list[str]:
        out = []
        for name in ("id", "region"):
            v = getattr(self, name)
            if not v or len(v) > 64 or not all(c.isalnum() or c in "._-" for c in v):
                out.append(f"{name} {v!r}: 1-64 characters of letters, digits, '.', '_' or '-'")
        if not -90.0 <= self.latitude_deg <= 90.0:
            out.append(f"latitude_deg {self.latitude_deg} outside [-90, 90]")
        if not -180.0 <= self.longitude_deg <= 180.0:
            out.append(f"longitude_deg {self.longitude_deg} outside [-180, 180]")
        return out


@dataclass(frozen=True)
class ListenConfig(_Section):
    SECTION = "listen"
    PATHS = ("control_socket",)
    host: str = "127.0.0.1"
    data_port: int = 7700  # 0 = any free port (tests)
    control_socket: str = ""  # default: <storage.data_dir>/control.sock
    max_connections: int = 256
    metrics_host: str = "127.0.0.1"  # /metrics, /healthz, /readyz
    metrics_port: int = 7701  # 0 = any free port; -1 = no HTTP endpoint
    # connections not yet authenticated (see dwcp.transport.admission)
    handshake_timeout_s: float = 10.0  # from accept: TLS handshake and the first HELLO, all of it
    header_timeout_s: float = 10.0  # from a frame header's first byte to its last
    max_unauthenticated: int = 0  # 0 = max(8, max_connections // 4), at most max_connections
    max_unauthenticated_per_source: int = 4  # per source address (an IPv6 /64)

    @property
    def unauthenticated_limit(self) -> int:
        """``max_unauthenticated``, or the value it derives from ``max_connections`` when it is 0."""
        if self.max_unauthenticated:
            return self.max_unauthenticated
        return min(self.max_connections, max(8, self.max_connections // 4))

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.data_port <= 65535:
            out.append(f"data_port {self.data_port} outside [0, 65535]")
        if not -1 <= self.metrics_port <= 65535:
            out.append(f"metrics_port {self.metrics_port} outside [-1, 65535] (-1 turns the endpoint off)")
        if self.max_connections < 1:
            out.append(f"max_connections {self.max_connections} must be >= 1")
        for name in ("handshake_timeout_s", "header_timeout_s"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                out.append(f"{name} {v} must be a positive number of seconds")
        if not 0 <= self.max_unauthenticated <= self.max_connections:
            out.append(f"max_unauthenticated {self.max_unauthenticated} outside [0, max_connections "
                       f"{self.max_connections}] (0 = derived from max_connections)")  # fmt: skip
        if self.max_unauthenticated_per_source < 1:
            out.append(f"max_unauthenticated_per_source {self.max_unauthenticated_per_source} must be >= 1")
        return out


RIGHTS = ("read", "write")


@dataclass(frozen=True)
class AclRule:
    """One [[security.acl]] rule: peers whose identity matches ``identity`` (a glob over the
    certificate's node id; "*" = every certified peer) may ``allow`` keys starting with ``prefix``."""

    identity: str
    prefix: str
    allow: tuple  # of RIGHTS

    def grants(self, identity: str, key: str, right: str) -> bool:
        from fnmatch import fnmatchcase

        return right in self.allow and key.startswith(self.prefix) and fnmatchcase(identity, self.identity)


@dataclass(frozen=True)
class SecurityConfig(_Section):
    SECTION = "security"
    PATHS = ("ca_cert", "cert", "key")
    plaintext: bool = False  # only with this explicit setting does the data port run without TLS
    ca_cert: str = ""
    cert: str = ""
    key: str = ""
    # [[security.acl]] rules; none = every certified peer may read and write every key
    acl: tuple = ()  # of AclRule
    relay_allow: tuple = ()  # of "HOST:PORT" a relayed send may name beyond the [cluster] peers
    # "sealed": after each data stream's mutual-TLS handshake and HELLO its frames go as AES-256-GCM records
    # keyed through that TLS session, up to a chunk each (dwcp.security.aead: ~130x fewer records and reads
    # than TLS's 16 KiB); "tls": every byte stays in TLS records.  Both sides must say "sealed" to use it.
    data_records: str = "sealed"

    def __post_init__(self) -> None:
        rules, bad = [], []
        for i, r in enumerate(self.acl):
            if isinstance(r, AclRule):
                rules.append(r)
                continue
            if not isinstance(r, dict) or set(r) != {"identity", "prefix", "allow"}:
                bad.append(f"acl[{i}]: a table with identity, prefix and allow")
                continue
            ident, prefix, allow = r["identity"], r["prefix"], r["allow"]
            if not isinstance(ident, str) or not ident or len(ident) > 256:
                bad.append(f'acl[{i}].identity: a node id or a glob such as "node-*" or "*"')
            elif not isinstance(prefix, str) or len(prefix) > 255 or any(ord(c) < 0x20 or ord(c) == 0x7F
                                                                          for c in prefix):  # fmt: skip
                bad.append(f'acl[{i}].prefix: a key prefix ("" = every key)')
            elif not isinstance(allow, list | tuple) or not allow or not set(allow) <= set(RIGHTS):
                bad.append(f'acl[{i}].allow {allow!r}: a non-empty list of "read", "write"')
            else:
                rules.append(AclRule(ident, prefix, tuple(sorted(set(allow)))))
        object.__setattr__(self, "acl", tuple(rules))
        object.__setattr__(self, "relay_allow", tuple(self.relay_allow))
        probs = [f"{self.SECTION}.{p}" for p in bad + self.problems() + self.path_problems()]
        if probs:
            raise ConfigError(problems=probs)

    def allows(self, identity: str, key: str, right: str) -> bool:
        """May the peer ``identity`` ``right`` ("read"/"write") ``key``?  No rules: every peer may."""
        return not self.acl or any(r.grants(identity, key, right) for r in self.acl)

    def problems(self) -> list[str]:
        out = []
        if not self.plaintext and not (self.ca_cert and self.cert and self.key):
            out.append(
                "ca_cert/cert/key: set all three for mutual TLS (see `dwcp certs`), "
                "or plaintext = true to run without authentication on purpose"
            )
        if self.data_records not in ("sealed", "tls"):
            out.append(
                f'data_records {self.data_records!r}: "sealed" (AES-256-GCM records keyed through TLS) or "tls"'
            )
        for a in self.relay_allow:
            host, sep, port = a.rpartition(":") if isinstance(a, str) else ("", "", "")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                out.append(f"relay_allow: {a!r} is not HOST:PORT")
        return out


@dataclass(frozen=True)
class StorageConfig(_Section):
    SECTION = "storage"
    PATHS = ("data_dir",)
    data_dir: str = "/var/lib/dwcp"
    keep_versions: int = 2
    partial_max_age_s: float = 7 * 24 * 3600.0
    max_object_bytes: int = 0  # a send announcing more is refused; 0 = the free space (and the wire's 16 TiB)
    scrub_rate_bytes_per_s: float = (
        32 * 1024 * 1024
    )  # the background scrub's read rate; 0 = no background scrub
    scrub_interval_s: float = 86400.0  # a scrub pass starts at most this often (dwcp.daemon.scrub)

    def problems(self) -> list[str]:
        out = []
        if not self.data_dir:
            out.append("data_dir must be set")
        if not 0 <= self.scrub_rate_bytes_per_s < 1e12:
            out.append(
                f"scrub_rate_bytes_per_s {self.scrub_rate_bytes_per_s}: bytes/s >= 0 (0: no background scrub)"
            )
        if not 1 <= self.scrub_interval_s <= 365 * 86400:
            out.append(f"scrub_interval_s {self.scrub_interval_s}: seconds in [1, {365 * 86400}]")
        if self.keep_versions < 2:
            out.append(
                f"keep_versions {self.keep_versions} must be >= 2 (the previous version is the next baseline)"
            )
        if not self.partial_max_age_s > 0:
            out.append(f"partial_max_age_s {self.partial_max_age_s} must be positive")
        if self.max_object_bytes < 0:
            out.append(
                f"max_object_bytes {self.max_object_bytes} must be >= 0 (0 = limited by the free space)"
            )
        return out


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,  # a bare letter: binary, as dd/qemu
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,  # IEC: binary
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "b": 1}  # SI: decimal  # fmt: skip
_BITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}  # bits, decimal (as iperf3)
SIZE_HELP = "4096, 64K or 64KiB (binary), 60MB (decimal); a rate also 500Mbit (bits) and a /s suffix"


def parse_size(text: str | int | float, *, rate: bool = False) -> float:
    """A byte count (or, ``rate``, a byte rate) from ``text``: a number, or a number and a unit -- ``K``
    ``M`` ``G`` ``T`` and ``KiB`` ``MiB``... binary, ``kB`` ``MB`` ``GB``... decimal, and for a rate
    ``bit`` ``Kbit`` ``Mbit`` ``Gbit`` (bits, decimal: divided by 8); ``/s`` may follow a rate.  The
    same in config files and on the command line.  ValueError says what is accepted."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int | float):
        n = float(text)
    else:
        t = text.strip().replace(" ", "")
        if rate:
            t = t.removesuffix("/s")
        i = len(t)
        while i and not (t[i - 1].isdigit() or t[i - 1] == "."):
            i -= 1
        num, unit = t[:i], t[i:].lower()
        try:
            n = float(num)
        except ValueError:
            raise ValueError(f"not a {'rate' if rate else 'size'}: {text!r} ({SIZE_HELP})") from None
        if unit in _UNITS:
            n *= _UNITS[unit]
        elif rate and unit in _BITS:
            n *= _BITS[unit] / 8
        else:
            raise ValueError(f"unknown unit {t[i:]!r} in {text!r} ({SIZE_HELP})")
    if not (n >= 0 and n < 1 << 60):
        raise ValueError(f"{'rate' if rate else 'size'} {text!r} must be >= 0")
    return n


ENGINES = ("auto", "uring", "epoll", "threads")  # transport.engine (dwcp.transport.engine)
ACKS = ("one", "quorum", "all")  # cluster.ack: verified copies a replicated send waits for (acks_needed)
MAX_REPLICAS = 9  # cluster.replicas: the first receiver and the most hops a chain may name after it


def acks_needed(ack: str, replicas: int) -> int:
    """Verified copies a send to ``replicas`` homes must reach under ``ack``: 1, a majority, or all."""
    return {"one": 1, "quorum": replicas // 2 + 1, "all": replicas}[ack]


@dataclass(frozen=True)
class TransportConfig(_Section):
    SECTION = "transport"
    min_streams: int = 1
    max_streams: int = 16
    initial_streams: int = 0  # 0 = from the bandwidth-delay product
    chunk_size_bytes: int = 4 * MiB  # with adaptive_chunks: the size for a path not measured yet
    adaptive_chunks: bool = True  # chunk size and first stream count from the last send to the same peer
    window_chunks: int = 2  # unacknowledged chunks per stream
    stall_timeout_s: float = 15.0  # no progress for this long = a dead stream
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0  # receiver side: a silent connection is closed
    drain_timeout_s: float = 30.0  # SIGTERM: in-flight transfers get this long, then are checkpointed
    max_stream_reconnects: int = 32
    rate_limit_bytes_per_s: float = 0.0  # 0 = no cap
    link_bytes_per_s: float = 0.0  # 0 = unknown (auto streams start at min_streams)
    per_stream_window_bytes: int = 4 * MiB
    socket_buffer_bytes: int = 0  # SO_SNDBUF and SO_RCVBUF of every stream, both ends; 0 = from the BDP
    congestion: str = "bbr"
    zerocopy: bool = (
        True  # large raw payloads go MSG_ZEROCOPY on plaintext, non-loopback sends; false: no probe
    )
    source_address: str = ""
    interface: str = ""
    compress_workers: int = 0  # chunks encoded at once per send (and per fetch); 0 = one per CPU
    engine: str = "auto"  # receive engine: auto | uring | epoll | threads (dwcp/transport/engine.py)
    engine_slots: int = 16  # each loop's 1 MiB slots: RAW payloads it receives at once (1..64)
    engine_loops: int = 0  # the engine's loops (pumps); streams spread over them; 0 = one per CPU, up to 4
    engine_cpus: tuple = ()  # CPUs the engine's loops run on; () = the NIC queues' IRQ CPUs (engine.receive_cpus)

    @property
    def encode_workers(self) -> int:
        """``compress_workers``, or the CPU count when it is 0."""
        return self.compress_workers or os.cpu_count() or 1

    def problems(self) -> list[str]:
        out = []
        if not 1 <= self.min_streams <= self.max_streams <= 256:
            out.append(
                f"min_streams {self.min_streams} / max_streams {self.max_streams}: need 1 <= min <= max <= 256"
            )
        elif self.initial_streams and not self.min_streams <= self.initial_streams <= self.max_streams:
            out.append(
                f"initial_streams {self.initial_streams} outside [min_streams, max_streams] (0 = from the BDP)"
            )
        cs = self.chunk_size_bytes
        if cs < 4096 or cs % 4096 or cs > 64 * MiB:
            out.append(f"chunk_size_bytes {cs}: a multiple of 4096 in [4 KiB, 64 MiB]")
        if self.window_chunks < 1:
            out.append(f"window_chunks {self.window_chunks} must be >= 1")
        for name in ("stall_timeout_s", "connect_timeout_s", "idle_timeout_s", "drain_timeout_s"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                out.append(f"{name} {v} must be a positive number of seconds")
        for name in ("rate_limit_bytes_per_s", "link_bytes_per_s"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                out.append(f"{name} {v} must be >= 0 (0 = none/unknown)")
        if self.per_stream_window_bytes < 64 * 1024:
            out.append(f"per_stream_window_bytes {self.per_stream_window_bytes} must be >= 64 KiB")
        if self.socket_buffer_bytes < 0:
            out.append(f"socket_buffer_bytes {self.socket_buffer_bytes} must be >= 0 (0 = from the BDP)")
        if self.engine not in ENGINES:
            out.append(f"engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if not 1 <= self.engine_slots <= 64:
            out.append(f"engine_slots {self.engine_slots} must be in 1..64")
        if not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 4096 for c in self.engine_cpus
        ):
            out.append(f"engine_cpus {list(self.engine_cpus)}: CPU numbers (0..4095), e.g. [2, 3]")
        if not 0 <= self.engine_loops <= 64:
            out.append(f"engine_loops {self.engine_loops} must be in 0..64 (0 = one per CPU, up to 4)")
        if self.max_stream_reconnects < 0 or self.compress_workers < 0:
            out.append("max_stream_reconnects and compress_workers must be >= 0")
        return out


DICT_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class DictRule:
    """One ``[[codec.dictionary]]`` rule: keys matching ``pattern`` (a glob) compress with dictionary ``type``."""

    pattern: str
    type: str

    def matches(self, key: str) -> bool:
        from fnmatch import fnmatchcase

        return fnmatchcase(key, self.pattern)


@dataclass(frozen=True)
class CodecSettings(_Section):
    """What the sender's encoder and its delta policy do (dwcp.transport.sender); also the data port's fetch encoder."""

    SECTION = "codec"
    zstd_level: int = 0  # a fixed zstd level for every chunk zstd pays on; 0 = adaptive within min..max
    zstd_level_min: int = -7  # bounds of the adaptive level (negative = zstd's fast modes)
    zstd_level_max: int = 9
    delta: bool = True  # false: every send goes full (no XBZRLE delta, no pages mode)
    max_delta_chain: int = 10  # consecutive non-full sends of a key, then a full one; 0 = always full
    baseline_refresh_s: float = 300.0  # seconds since a key's last full send, then the next is full
    dictionaries_dir: str = (
        ""  # trained zstd dictionaries (dwcp.codec.dictionaries); "" = <data_dir>/dictionaries
    )
    # [[codec.dictionary]] rules: keys matching a pattern compress with that type's dictionary; first match wins
    dictionary: tuple = ()  # of DictRule

    def __post_init__(self) -> None:
        rules, bad = [], []
        for i, r in enumerate(self.dictionary):
            if isinstance(r, DictRule):
                rules.append(r)
            elif not isinstance(r, dict) or set(r) != {"pattern", "type"}:
                bad.append(f"dictionary[{i}]: a table with pattern and type")
            elif not isinstance(r["pattern"], str) or not 0 < len(r["pattern"]) <= 255:
                bad.append(f'dictionary[{i}].pattern: a glob over keys, such as "config/*"')
            elif not isinstance(r["type"], str) or not DICT_TYPE_RE.fullmatch(r["type"]):
                bad.append(f"dictionary[{i}].type {r['type']!r}: 1-64 letters, digits, '.', '_' or '-'")
            else:
                rules.append(DictRule(r["pattern"], r["type"]))
        object.__setattr__(self, "dictionary", tuple(rules))
        probs = [f"{self.SECTION}.{p}" for p in bad + self.problems()]
        if probs:
            raise ConfigError(problems=probs)

    def dictionary_dir(self, data_dir: str) -> str:
        """Where this node's dictionaries live."""
        return self.dictionaries_dir or os.path.join(data_dir, "dictionaries")

    @property
    def fixed_level(self) -> int | None:
        """The zstd level to pin, or None to adapt within [zstd_level_min, zstd_level_max]."""
        return self.zstd_level or None

    def problems(self) -> list[str]:
        out = []
        if not -7 <= self.zstd_level_min <= self.zstd_level_max <= 22:
            out.append(f"zstd_level_min {self.zstd_level_min} / zstd_level_max {self.zstd_level_max}: "
                       "need -7 <= min <= max <= 22")  # fmt: skip
        if self.zstd_level and not -7 <= self.zstd_level <= 22:
            out.append(f"zstd_level {self.zstd_level} outside [-7, 22] (0 = adaptive)")
        if self.max_delta_chain < 0:
            out.append(f"max_delta_chain {self.max_delta_chain} must be >= 0")
        if not (self.baseline_refresh_s > 0 and math.isfinite(self.baseline_refresh_s)):
            out.append(f"baseline_refresh_s {self.baseline_refresh_s} must be a positive number of seconds")
        if self.dictionaries_dir and not os.path.isabs(self.dictionaries_dir):
            out.append(f"dictionaries_dir {self.dictionaries_dir!r} must be an absolute path")
        return out


@dataclass(frozen=True)
class HealthConfig(_Section):
    SECTION = "health"
    min_compression_ratio: float = 1.1  # below: HDE degraded
    error_rate_degraded: float = 0.01  # over the window: degraded at or above this fraction
    error_rate_unhealthy: float = 0.05  # unhealthy above this fraction
    error_window_s: float = 60.0
    baseline_max_age_s: float = 300.0  # a lagging replica older than this: degraded
    check_interval_s: float = 5.0
    # the throughput this node should see (bytes/s): exported as dwcp_sla_throughput_bytes_per_second for
    # monitoring/ (dwcp:transfer_throughput:sla_ratio, DwcpThroughputBelowSLA); 0 = none
    sla_throughput_bytes_per_s: float = 0.0
    # a path anomaly (a send's detectors: goodput drop, RTT step, retransmit spike) younger than this
    # keeps the "paths" check degraded, with the evidence in its message
    path_anomaly_window_s: float = 600.0

    def problems(self) -> list[str]:
        out = []
        if not (0 <= self.sla_throughput_bytes_per_s < 1e13):
            out.append(
                f"sla_throughput_bytes_per_s {self.sla_throughput_bytes_per_s}: bytes/s >= 0 (0: none)"
            )
        if not 0 <= self.error_rate_degraded <= self.error_rate_unhealthy <= 1:
            out.append(f"error_rate_degraded {self.error_rate_degraded} / error_rate_unhealthy "
                       f"{self.error_rate_unhealthy}: need 0 <= degraded <= unhealthy <= 1")  # fmt: skip
        for name in ("min_compression_ratio", "error_window_s", "baseline_max_age_s", "check_interval_s",
                     "path_anomaly_window_s"):  # fmt: skip
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                out.append(f"{name} {v} must be positive")
        return out


@dataclass(frozen=True)
class LoggingConfig(_Section):
    SECTION = "logging"
    level: str = "info"
    format: str = "text"  # text | json | logfmt (dwcp.ops.logfmt); under journald: priorities, no timestamps

    def problems(self) -> list[str]:
        out = []
        if self.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            out.append(f"level {self.level!r}: one of debug, info, warning, error, critical")
        if self.format not in ("text", "json", "logfmt"):
            out.append(f"format {self.format!r}: one of text, json, logfmt")
        return out

    @property
    def level_number(self) -> int:
        return int(logging.getLevelName(self.level.upper()))


@dataclass(frozen=True)
class PeerConfig:
    """A cluster member, from [[cluster.peers]]."""

    id: str
    address: str  # HOST:PORT of its data port
    region: str = "default"
    latitude_deg: float | None = None
    longitude_deg: float | None = None
    bft_key: str = (
        ""  # its Ed25519 public key (64 hex digits; `dwcp certs bft-key`), for consensus.algorithm "bft"
    )


@dataclass(frozen=True)
class ClusterConfig(_Section):
    SECTION = "cluster"
    peers: tuple = ()  # of PeerConfig; [[cluster.peers]] tables in TOML
    replicas: int = 2  # copies of each key, on the first distinct peers of the hash ring
    ack: str = "quorum"  # when a replicated send returns: one | quorum | all verified copies (ACKS)
    conflicts: str = "lww"  # concurrent writes of a key: lww (later HLC is the latest) | reject (first wins)
    vnodes: int = 150  # ring points per peer
    policy: str = "p2c"  # round_robin, least_connections, p2c, geo, region
    region_priority: tuple = ()  # of region names, for policy = "region"
    prefixes: tuple = ()  # of {cidr, latitude_deg, longitude_deg, region}: locations of unknown addresses
    probe_interval_s: float = 5.0
    repair_interval_s: float = 30.0  # anti-entropy passes (dwcp.cluster.repair); 0 = only `dwcp repair`
    repair_rate_bytes_per_s: float = 0.0  # what a repair's send may use; 0 = unlimited
    affinity_ttl_s: float = 600.0
    breaker_consecutive_failures: int = 5
    breaker_failure_rate: float = 0.5
    breaker_min_calls: int = 10
    breaker_window_s: float = 60.0
    breaker_open_s: float = 30.0
    breaker_max_open_s: float = 300.0
    breaker_half_open_calls: int = 3

    def __post_init__(self) -> None:
        peers = []
        for i, p in enumerate(self.peers):
            if isinstance(p, PeerConfig):
                peers.append(p)
                continue
            if not isinstance(p, dict) or not {"id", "address"} <= set(p) or not set(p) <= {
                "id", "address", "region", "latitude_deg", "longitude_deg", "bft_key"}:  # fmt: skip
                raise ConfigError(problems=[f"cluster.peers[{i}]: a table with id, address and optionally "
                                            "region, latitude_deg, longitude_deg, bft_key"])  # fmt: skip
            peers.append(PeerConfig(**p))
        object.__setattr__(self, "peers", tuple(peers))
        object.__setattr__(self, "region_priority", tuple(self.region_priority))
        object.__setattr__(self, "prefixes", tuple(self.prefixes))
        super().__post_init__()

    def problems(self) -> list[str]:
        out = []
        ids = [p.id for p in self.peers]
        if len(set(ids)) != len(ids):
            out.append(f"peers: duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
        for p in self.peers:
            host, sep, port = p.address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                out.append(f"peers: {p.id}: address {p.address!r} is not HOST:PORT")
            if (p.latitude_deg is None) != (p.longitude_deg is None):
                out.append(f"peers: {p.id}: give both latitude_deg and longitude_deg, or neither")
            elif p.latitude_deg is not None and not (
                -90 <= p.latitude_deg <= 90 and -180 <= p.longitude_deg <= 180
            ):  # type: ignore[operator]
                out.append(f"peers: {p.id}: coordinates out of range")
            if p.bft_key and not re.fullmatch(r"[0-9a-f]{64}", p.bft_key):
                out.append(f"peers: {p.id}: bft_key must be 64 lowercase hex digits (an Ed25519 public key)")
        if not 1 <= self.replicas <= MAX_REPLICAS:
            out.append(f"replicas {self.replicas} must be in [1, {MAX_REPLICAS}]")
        if self.ack not in ACKS:
            out.append(f"ack {self.ack!r}: one of {', '.join(ACKS)}")
        if self.conflicts not in ("lww", "reject"):
            out.append(f"conflicts {self.conflicts!r}: one of lww, reject")
        if not (0 <= self.repair_interval_s <= 86400):
            out.append(
                f"repair_interval_s {self.repair_interval_s}: seconds in [0, 86400] (0: only on demand)"
            )
        if not (0 <= self.repair_rate_bytes_per_s < 1e12):
            out.append(f"repair_rate_bytes_per_s {self.repair_rate_bytes_per_s}: bytes/s >= 0 (0: unlimited)")
        if not 1 <= self.vnodes <= 10_000:
            out.append(f"vnodes {self.vnodes} outside [1, 10000]")
        if self.policy not in ("round_robin", "least_connections", "p2c", "geo", "region"):
            out.append(f"policy {self.policy!r}: one of round_robin, least_connections, p2c, geo, region")
        for i, e in enumerate(self.prefixes):
            if not isinstance(e, dict) or not {"cidr", "latitude_deg", "longitude_deg"} <= set(e):
                out.append(f"prefixes[{i}]: a table with cidr, latitude_deg, longitude_deg (and region)")
        for name in ("probe_interval_s", "affinity_ttl_s", "breaker_window_s", "breaker_open_s"):
            if not getattr(self, name) > 0:
                out.append(f"{name} must be positive")
        if not 0 < self.breaker_failure_rate <= 1:
            out.append(f"breaker_failure_rate {self.breaker_failure_rate} outside (0, 1]")
        if self.breaker_max_open_s < self.breaker_open_s:
            out.append("breaker_max_open_s must be >= breaker_open_s")
        if min(self.breaker_consecutive_failures, self.breaker_min_calls, self.breaker_half_open_calls) < 1:
            out.append(
                "breaker_consecutive_failures, breaker_min_calls and breaker_half_open_calls must be >= 1"
            )
        return out


@dataclass(frozen=True)
class ConsensusConfig(_Section):
    SECTION = "consensus"
    PATHS = ("bft_key_file", "etcd_ca", "etcd_cert", "etcd_key")
    enabled: bool = False  # replicate the catalog (raft: over the [cluster] peers, all of them vote)
    backend: str = "raft"  # "raft" among the daemons, or "etcd" (an external etcd v3 cluster keeps the log)
    algorithm: str = (
        "raft"  # "raft" (crash faults) or "bft" (PBFT, f < n/3 Byzantine nodes; needs peers' bft_key)
    )
    # switchable at run time by a committed command (`dwcp consensus switch bft|raft`): this is the start
    adaptive: bool = (
        False  # host the catalog in switchable epochs even when starting with raft (`dwcp consensus switch`)
    )
    bft_key_file: str = (
        ""  # this node's Ed25519 signing key; "" = <data_dir>/consensus/bft.key (made 0600 if missing)
    )
    # adaptive = true: a fault detector counts evidence of Byzantine behaviour per peer (dwcp.consensus.adaptive),
    # and with auto_switch the cluster switches raft -> bft on it, and back after a quiet period
    auto_switch: bool = True  # propose those switches (false: detect and report only); needs the bft_keys
    byzantine_evidence_min: int = 3  # evidence events within evidence_window_s that switch to bft (>= 2)
    evidence_window_s: float = 30.0  # how far back evidence counts toward that minimum
    quiet_period_s: float = 600.0  # back to raft after this long without evidence (>= evidence_window_s)
    switch_cooldown_s: float = 120.0  # at least this long between two automatic switches
    tick_ms: float = 50.0  # heartbeat interval; elections time out after election_ticks..2x ticks
    election_ticks: int = 10
    etcd_endpoints: tuple = ()  # of "http(s)://HOST:PORT"; requests fail over to the next one
    etcd_prefix: str = "/dwcp/default"  # every key of this cluster's catalog lives under it
    etcd_ca: str = ""  # CA bundle that signed etcd's server certificate ("" = the system's)
    etcd_cert: str = ""  # client certificate for etcd's --client-cert-auth ("" = none)
    etcd_key: str = ""  # its private key

    def __post_init__(self) -> None:
        object.__setattr__(self, "etcd_endpoints", tuple(self.etcd_endpoints))
        super().__post_init__()

    def problems(self) -> list[str]:
        from urllib.parse import urlsplit

        out = []
        if self.algorithm not in ("raft", "bft"):
            out.append(f'algorithm {self.algorithm!r}: one of "raft", "bft"')
        if self.backend not in ("raft", "etcd"):
            out.append(f'backend {self.backend!r}: one of "raft", "etcd"')
        if not 1.0 <= self.tick_ms <= 10_000.0:
            out.append(f"tick_ms {self.tick_ms} outside [1, 10000]")
        if not 3 <= self.election_ticks <= 1000:
            out.append(f"election_ticks {self.election_ticks} outside [3, 1000]")
        if not 2 <= self.byzantine_evidence_min <= 1_000_000:
            out.append(f"byzantine_evidence_min {self.byzantine_evidence_min} outside [2, 1000000] "
                       "(one piece of evidence never switches)")  # fmt: skip
        if not 0.0 < self.evidence_window_s <= 86_400.0:
            out.append(f"evidence_window_s {self.evidence_window_s} outside (0, 86400]")
        if not 0.0 < self.quiet_period_s <= 30 * 86_400.0:
            out.append(f"quiet_period_s {self.quiet_period_s} outside (0, 2592000]")
        elif self.quiet_period_s < self.evidence_window_s:
            out.append(f"quiet_period_s {self.quiet_period_s:g} is shorter than evidence_window_s "
                       f"{self.evidence_window_s:g}: back to raft needs a quiet period at least a window long")  # fmt: skip
        if not 0.0 <= self.switch_cooldown_s <= 86_400.0:
            out.append(f"switch_cooldown_s {self.switch_cooldown_s} outside [0, 86400]")
        for e in self.etcd_endpoints:
            try:
                u = urlsplit(e) if isinstance(e, str) else None
                ok = (
                    u is not None
                    and u.scheme in ("http", "https")
                    and bool(u.hostname)
                    and u.port is not None
                )
                ok = ok and u is not None and u.path in ("", "/") and not u.query
            except ValueError:
                ok = False
            if not ok:
                out.append(f"etcd_endpoints: {e!r} is not http(s)://HOST:PORT")
        if self.backend == "etcd" and self.enabled and not self.etcd_endpoints:
            out.append('etcd_endpoints: backend "etcd" needs at least one endpoint')
        if (
            not self.etcd_prefix.startswith("/")
            or self.etcd_prefix.rstrip("/") == ""
            or "\0" in self.etcd_prefix
        ):
            out.append(f'etcd_prefix {self.etcd_prefix!r}: an absolute key prefix such as "/dwcp/<cluster>"')
        if bool(self.etcd_cert) != bool(self.etcd_key):
            out.append("etcd_cert/etcd_key: give both (client certificate and its key) or neither")
        if (self.etcd_ca or self.etcd_cert) and any(e.startswith("http://") for e in self.etcd_endpoints
                                                    if isinstance(e, str)):  # fmt: skip
            out.append("etcd_ca/etcd_cert: set, but some etcd_endpoints are plain http:// (use https://)")
        return out


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)  # mutual TLS unless told otherwise
    storage: StorageConfig = field(default_factory=StorageConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    codec: CodecSettings = field(default_factory=CodecSettings)
    health: HealthConfig = field(default_factory=HealthConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)

    @property
    def control_socket(self) -> str:
        return self.listen.control_socket or os.path.join(self.storage.data_dir, "control.sock")

    @property
    def dictionaries_dir(self) -> str:
        return self.codec.dictionary_dir(self.storage.data_dir)


_SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


def _did_you_mean(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _build_section(cls, data: Any, where: str, problems: list[str]):
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a table, got {type(data).__name__}")
        return None
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        f = known.get(k)
        if f is None:
            problems.append(f"{where}.{k}: unknown setting{_did_you_mean(k, known)}")
            continue
        want = type(f.default)
        if (
            isinstance(v, str)
            and want in (int, float)
            and (k.endswith("_bytes") or k.endswith("_bytes_per_s"))
        ):
            try:  # "4M", "64MiB", "500Mbit": the same sizes and rates the CLI takes
                n = parse_size(v, rate=k.endswith("_per_s"))
            except ValueError as exc:
                problems.append(f"{where}.{k}: {exc}")
                continue
            v = int(n) if want is int else n
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if want is tuple and isinstance(v, list):
            v = tuple(v)
        if not isinstance(v, want) or (want is not bool and isinstance(v, bool)):
            problems.append(f"{where}.{k}: expected {want.__name__}, got {type(v).__name__} {v!r}")
            continue
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def from_dict(data: dict) -> Config:
    """Build a Config from parsed TOML; raise one ConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError("config: expected a table")
    sections = {}
    for name, value in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            problems.append(
                f"{name}: unknown section{_did_you_mean(name, _SECTIONS)} (known: {', '.join(_SECTIONS)})"
            )
            continue
        sec = _build_section(cls, value, name, problems)
        if sec is not None:
            sections[name] = sec
    for name, cls in _SECTIONS.items():  # defaults must be valid too (security is not)
        if name not in data:
            try:
                cls()
            except ConfigError as exc:
                problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems=problems)
    return Config(**sections)


def load_toml(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(problems=[f"{path}: {p}" for p in exc.problems]) from None


# What a running daemon changes without a restart (section -> fields; "*" = all).
# The rest (ports, data dir, identity, node id...) is reported and keeps its old value.
LIVE: dict[str, frozenset[str]] = {
    "transport": frozenset(
        {
            "min_streams",
            "max_streams",
            "initial_streams",
            "window_chunks",
            "stall_timeout_s",
            "connect_timeout_s",
            "idle_timeout_s",
            "drain_timeout_s",
            "max_stream_reconnects",
            "rate_limit_bytes_per_s",
            "link_bytes_per_s",
            "per_stream_window_bytes",
            "socket_buffer_bytes",
            "congestion",
            "zerocopy",
            "chunk_size_bytes",
            "adaptive_chunks",
            "compress_workers",
        }
    ),  # fmt: skip
    # the dictionary directory is opened at start; the rules are read by each send
    "codec": frozenset(
        {
            "zstd_level",
            "zstd_level_min",
            "zstd_level_max",
            "delta",
            "max_delta_chain",
            "baseline_refresh_s",
            "dictionary",
        }
    ),  # fmt: skip
    "health": frozenset({"*"}),
    "logging": frozenset({"*"}),
    "cluster": frozenset({"*"}),  # membership, policy and breaker settings: the next pick uses them
    "storage": frozenset(
        {
            "keep_versions",
            "partial_max_age_s",
            "max_object_bytes",
            "scrub_rate_bytes_per_s",
            "scrub_interval_s",
        }
    ),
    "security": frozenset({"acl", "relay_allow"}),  # the next connection is judged by them
    # read by the data port at each accept (limits) and for each new connection (deadlines)
    "listen": frozenset(
        {"handshake_timeout_s", "header_timeout_s", "max_unauthenticated", "max_unauthenticated_per_source"}
    ),
}


def _toml(v: Any) -> str:
    """A setting's value as the config file spells it ("epoll", 4194304, true, ["a", "b"])."""
    if isinstance(v, tuple):
        v = list(v)
    try:
        return json.dumps(v, default=lambda o: {k: getattr(o, k) for k in o.__dataclass_fields__}
                          if dataclasses.is_dataclass(o) else str(o))  # fmt: skip
    except (TypeError, ValueError):
        return str(v)


def reload_plan(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(changes applied live, changes that need a restart), each as "section.field: old -> new"."""
    live: list[str] = []
    restart: list[str] = []
    for sec in _SECTIONS:
        a, b = getattr(old, sec), getattr(new, sec)
        for f in fields(a):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if va == vb:
                continue
            line = f"{sec}.{f.name}: {_toml(va)} -> {_toml(vb)}"
            ok = LIVE.get(sec, frozenset())
            (live if "*" in ok or f.name in ok else restart).append(line)
    return live, restart


def merge_live(old: Config, new: Config) -> Config:
    """The config a daemon runs after a reload: ``new``'s live fields, ``old``'s others."""
    from dataclasses import replace

    out = {}
    for sec in _SECTIONS:
        a, b = getattr(old, sec), getattr(new, sec)
        ok = LIVE.get(sec, frozenset())
        if "*" in ok:
            out[sec] = b
        else:
            out[sec] = replace(a, **{n: getattr(b, n) for n in ok})
    return Config(**out)
