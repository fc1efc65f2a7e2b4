"""Per-NIC stream profiles and sysctl checks: pure functions, no I/O.

Theory of operation
-------------------
A path holds ``bdp_bytes = link rate x RTT`` in flight.  One TCP stream can
keep at most its window in flight, and the window is about half of the
socket buffer (the kernel keeps the other half for bookkeeping:
``tcp_adv_win_scale = 1``).  A socket's buffer is capped by autotuning's
ceiling (``net.ipv4.tcp_rmem``/``tcp_wmem`` max) or, for an explicit
``SO_RCVBUF``/``SO_SNDBUF``, by ``net.core.rmem_max``/``wmem_max``; the
transport uses whichever is larger (see ``dwcp.transport.sockopts``).  So:

- ``per_stream_window_bytes = min(buffer limit / 2, bdp_bytes)``, at least 64 KiB;
- ``initial_streams = ceil(bdp_bytes / per_stream_window_bytes)`` in [1, 64];
- ``max_streams`` = the larger of 2 x the NIC's tx queues and what filling
  the BDP takes (at least 4), at most 64: on a long path the BDP decides, and
  single-queue NICs (virtio, veth, TUN) must not cap a WAN send at 2 streams
  (perf/sla.py: 4-8 streams did best at 50 ms on one queue); past 64 the
  profile warns (bigger buffers are the fix);
- with an unknown link rate (virtual NICs, no carrier) there is no BDP: the
  profile starts at 4 streams, allows 16 (the config's default) and lets the
  online controller probe;
- ``tx_irq_cpus`` is carried over from the NIC: the CPUs its tx queues'
  IRQs run on, where the sender pins its stream threads when the NIC has
  more than one tx queue (``dwcp.transport.nicplan``).

Rules
-----
1. No I/O here.  The readers (``dwcp.tune.nic``) hand over facts; a fact
   that could not be read is None and the profile says "unknown".
2. Units are in the names: ``_bytes``, ``_mbit_s``, ``_bytes_per_s``, ``_s``.
3. Warnings are whole sentences that end with the exact command to run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .nic import NicInfo

__all__ = [
    "Sysctls",
    "StreamProfile",
    "parse_sysctls",
    "stream_profile",
    "buffer_warnings",
    "congestion_warnings",
    "DEFAULT_RTT_S",
]

KiB = 1 << 10
MiB = 1 << 20
MAX_STREAMS = 64
MIN_WINDOW_BYTES = 64 * KiB
UNKNOWN_RATE_INITIAL_STREAMS = 4
UNKNOWN_RATE_MAX_STREAMS = 16  # TransportConfig.max_streams' default
MIN_BUF_BYTES = 256 * KiB  # the clamp dwcp.transport.sockopts applies to explicit buffers
MAX_BUF_BYTES = 64 * MiB
CHUNK_TIME_S = 0.1  # a chunk is about this much link time
MIN_CHUNK_BYTES = 1 * MiB
MAX_CHUNK_BYTES = 16 * MiB
DEFAULT_CHUNK_BYTES = 4 * MiB  # TransportConfig.chunk_size_bytes' default
# Nothing is measured: without --rtt-ms a profile assumes a LAN/loopback RTT.
DEFAULT_RTT_S = 0.001

# Linux's defaults, used where a sysctl cannot be read (a container without /proc/sys/net).
LINUX_DEFAULT_RMEM_MAX_BYTES = 212992
LINUX_DEFAULT_TCP_RMEM_BYTES = (4096, 131072, 6291456)
LINUX_DEFAULT_TCP_WMEM_BYTES = (4096, 16384, 4194304)


@dataclass(frozen=True)
class Sysctls:
    """The kernel's socket-buffer limits and congestion controls; None = could not be read."""

    rmem_max_bytes: int | None = None
    wmem_max_bytes: int | None = None
    tcp_rmem_bytes: tuple[int, int, int] | None = None  # min, default, max
    tcp_wmem_bytes: tuple[int, int, int] | None = None
    congestion_control: str | None = None
    available_congestion_control: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _one_int(text: str | None) -> int | None:
    try:
        n = int(text.strip()) if text is not None else None
    except ValueError:
        return None
    return n if n is not None and n >= 0 else None


def _triple(text: str | None) -> tuple[int, int, int] | None:
    parts = text.split() if text is not None else []
    try:
        a, b, c = (int(p) for p in parts)
    except ValueError:  # not three integers
        return None
    return (a, b, c) if 0 <= a <= b <= c else None


def _word(text: str | None) -> str | None:
    w = text.strip() if text is not None else ""
    return w if w and w.isprintable() and " " not in w else None


def parse_sysctls(texts: Mapping[str, str | None]) -> Sysctls:
    """``texts``: sysctl name (``net.core.rmem_max``...) -> its /proc/sys file's content, None when unreadable."""
    avail = texts.get("net.ipv4.tcp_available_congestion_control")
    return Sysctls(
        rmem_max_bytes=_one_int(texts.get("net.core.rmem_max")),
        wmem_max_bytes=_one_int(texts.get("net.core.wmem_max")),
        tcp_rmem_bytes=_triple(texts.get("net.ipv4.tcp_rmem")),
        tcp_wmem_bytes=_triple(texts.get("net.ipv4.tcp_wmem")),
        congestion_control=_word(texts.get("net.ipv4.tcp_congestion_control")),
        available_congestion_control=tuple(avail.split()) if avail is not None else None,
    )


@dataclass(frozen=True)
class StreamProfile:
    """What the transport should start with on one NIC.

    ``link_bytes_per_s``/``bdp_bytes`` are None when the link speed is unknown.
    ``socket_buffer_bytes`` is the per-socket buffer a full window needs
    (2 x window, clamped like the transport does), 0 = leave it to autotuning.
    ``tx_irq_cpus``: the CPUs of the NIC's tx-queue IRQs (() none found, None unknown).
    """

    nic: str
    speed_mbit_s: int | None
    mtu: int | None
    tx_queues: int | None
    rtt_s: float
    link_bytes_per_s: float | None
    bdp_bytes: int | None
    per_stream_window_bytes: int
    min_streams: int
    initial_streams: int
    max_streams: int
    socket_buffer_bytes: int
    chunk_size_bytes: int
    why: str
    warnings: tuple[str, ...] = ()
    tx_irq_cpus: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        d["tx_irq_cpus"] = list(self.tx_irq_cpus) if self.tx_irq_cpus is not None else None
        return d


def window_limit_bytes(sysctls: Sysctls) -> int:
    """The largest window one stream can get: half the largest buffer, receive and send side."""
    rmem = max((sysctls.tcp_rmem_bytes or LINUX_DEFAULT_TCP_RMEM_BYTES)[2],
               sysctls.rmem_max_bytes or LINUX_DEFAULT_RMEM_MAX_BYTES)  # fmt: skip
    wmem = max((sysctls.tcp_wmem_bytes or LINUX_DEFAULT_TCP_WMEM_BYTES)[2],
               sysctls.wmem_max_bytes or LINUX_DEFAULT_RMEM_MAX_BYTES)  # fmt: skip
    return max(MIN_WINDOW_BYTES, min(rmem, wmem) // 2)


def chunk_size_bytes(link_bytes_per_s: float | None) -> int:
    """About ``CHUNK_TIME_S`` of link time, a power of two in [1, 16] MiB; 4 MiB when unknown."""
    if not link_bytes_per_s:
        return DEFAULT_CHUNK_BYTES
    want = link_bytes_per_s * CHUNK_TIME_S
    pow2 = 1 << max(0, int(math.floor(math.log2(want)))) if want >= 1 else 1
    return max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, pow2))


def _round_up_mib(n: int) -> int:
    return -(-n // MiB) * MiB


def buffer_warnings(sysctls: Sysctls, bdp_bytes: int, nic: str) -> list[str]:
    """A line per buffer sysctl below 2 x BDP (the window is half the buffer), with the line to set."""
    need = _round_up_mib(2 * bdp_bytes)
    out = []
    for name, value in (
        ("net.core.rmem_max", sysctls.rmem_max_bytes),
        ("net.core.wmem_max", sysctls.wmem_max_bytes),
    ):
        if value is not None and value < need:
            out.append(f"{name} = {value} is below 2 x the BDP of {nic} ({2 * bdp_bytes} bytes): "
                       f"sysctl -w {name}={need}")  # fmt: skip
    for name, triple in (
        ("net.ipv4.tcp_rmem", sysctls.tcp_rmem_bytes),
        ("net.ipv4.tcp_wmem", sysctls.tcp_wmem_bytes),
    ):
        if triple is not None and triple[2] < need:
            out.append(f"{name} max {triple[2]} is below 2 x the BDP of {nic} ({2 * bdp_bytes} bytes): "
                       f"sysctl -w {name}='{triple[0]} {triple[1]} {need}'")  # fmt: skip
    return out


def congestion_warnings(sysctls: Sysctls) -> list[str]:
    """Host-wide: dwcp asks for bbr on each socket; say how to get it when the kernel lacks it."""
    if sysctls.available_congestion_control is None:
        return [
            "net.ipv4.tcp_available_congestion_control is unreadable: cannot tell whether bbr is available"
        ]
    if "bbr" not in sysctls.available_congestion_control:
        return ["bbr is not available (have: " + (" ".join(sysctls.available_congestion_control) or "none")
                + "): modprobe tcp_bbr && sysctl -w net.ipv4.tcp_congestion_control=bbr"]  # fmt: skip
    return []


def _socket_buffer_bytes(window_bytes: int) -> int:
    return max(MIN_BUF_BYTES, min(MAX_BUF_BYTES, 2 * window_bytes))


def stream_profile(nic: NicInfo, *, rtt_s: float, sysctls: Sysctls) -> StreamProfile:
    """The profile for ``nic`` at ``rtt_s``; ``warnings`` hold this NIC's buffer problems."""
    if not (rtt_s > 0 and math.isfinite(rtt_s)):
        raise ValueError(f"rtt_s must be a positive number, not {rtt_s!r}")
    limit = window_limit_bytes(sysctls)
    if not nic.speed_mbit_s:
        return StreamProfile(
            nic=nic.name, speed_mbit_s=None, mtu=nic.mtu, tx_queues=nic.tx_queues, rtt_s=rtt_s,
            link_bytes_per_s=None, bdp_bytes=None, per_stream_window_bytes=limit, min_streams=1,
            initial_streams=UNKNOWN_RATE_INITIAL_STREAMS, max_streams=UNKNOWN_RATE_MAX_STREAMS,
            socket_buffer_bytes=0, chunk_size_bytes=DEFAULT_CHUNK_BYTES,
            why="link speed unknown (virtual NIC or no carrier): start at "
                f"{UNKNOWN_RATE_INITIAL_STREAMS} streams and let the controller probe",
            tx_irq_cpus=nic.tx_irq_cpus,
        )  # fmt: skip
    rate = nic.speed_mbit_s * 1e6 / 8
    bdp = max(1, round(rate * rtt_s))
    window = max(MIN_WINDOW_BYTES, min(limit, bdp))
    need = min(MAX_STREAMS, math.ceil(bdp / window))
    max_streams = min(MAX_STREAMS, max(2 * (nic.tx_queues or 1), need, 4))
    warnings = buffer_warnings(sysctls, bdp, nic.name)
    if math.ceil(bdp / window) > MAX_STREAMS:
        warnings.append(f"{nic.name}: filling the BDP takes {math.ceil(bdp / window)} streams of {window} bytes, "
                        f"more than {MAX_STREAMS}: raise the buffers above")  # fmt: skip
    return StreamProfile(
        nic=nic.name, speed_mbit_s=nic.speed_mbit_s, mtu=nic.mtu, tx_queues=nic.tx_queues, rtt_s=rtt_s,
        link_bytes_per_s=rate, bdp_bytes=bdp, per_stream_window_bytes=window, min_streams=1,
        initial_streams=min(need, max_streams), max_streams=max_streams,
        socket_buffer_bytes=_socket_buffer_bytes(window), chunk_size_bytes=chunk_size_bytes(rate),
        why=f"BDP {bdp} bytes = {nic.speed_mbit_s} Mbit/s x {rtt_s * 1000:g} ms; "
            f"{window}-byte windows -> {need} stream(s)",
        warnings=tuple(warnings), tx_irq_cpus=nic.tx_irq_cpus,
    )  # fmt: skip
