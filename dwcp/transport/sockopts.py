"""Socket options for data streams, each with its reason; never fatal when the kernel lacks one."""

from __future__ import annotations

import socket

from dwcp.errors import ConfigError

__all__ = ["tune_socket", "bind_source", "probe_zerocopy", "available_congestion_controls", "kernel_limits"]

TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
SO_ZEROCOPY = getattr(socket, "SO_ZEROCOPY", 60)
MIN_BUF = 256 * 1024
MAX_BUF = 64 * 1024 * 1024


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def available_congestion_controls() -> list[str]:
    v = _read("/proc/sys/net/ipv4/tcp_available_congestion_control")
    return v.split() if v else []


def kernel_limits() -> dict:
    def ints(p):
        v = _read(p)
        return [int(x) for x in v.split()] if v else None

    return {
        "rmem_max": (ints("/proc/sys/net/core/rmem_max") or [None])[0],
        "wmem_max": (ints("/proc/sys/net/core/wmem_max") or [None])[0],
        "tcp_rmem": ints("/proc/sys/net/ipv4/tcp_rmem"),
        "tcp_wmem": ints("/proc/sys/net/ipv4/tcp_wmem"),
    }


def tune_socket(sock: socket.socket, *, bdp_bytes: int | None = None, congestion: str | None = "bbr",
                notsent_lowat_bytes: int | None = 4 * 1024 * 1024, nodelay: bool = True) -> dict:  # fmt: skip
    applied: dict = {}
    if nodelay:
        # frames are written whole; never wait to coalesce a header with its payload
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        applied["nodelay"] = True
    if bdp_bytes:
        # a window of ~2x BDP keeps the pipe full across one loss-recovery RTT;
        # but explicit sizes switch the kernel's autotuning off (measured ~25%
        # slower on loopback), so only set them when autotuning's ceiling
        # (tcp_wmem/tcp_rmem max) is below what the path needs
        size = max(MIN_BUF, min(MAX_BUF, 2 * int(bdp_bytes)))
        lim = kernel_limits()
        for opt, auto in ((socket.SO_SNDBUF, lim["tcp_wmem"]), (socket.SO_RCVBUF, lim["tcp_rmem"])):
            if auto and auto[-1] >= size:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass
        applied["requested_buf_bytes"] = size
    applied["sndbuf_bytes"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    applied["rcvbuf_bytes"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if congestion:
        # BBR keeps goodput high on lossy, long paths where loss-based CUBIC backs off
        if congestion in available_congestion_controls():
            try:
                sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, congestion.encode())
            except OSError:
                pass
    try:
        applied["congestion"] = sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0").decode()
    except OSError:
        applied["congestion"] = None
    if notsent_lowat_bytes:
        # bound unsent bytes in the kernel to about one chunk, so a stalled stream
        # does not hide several chunks in its buffer (smaller values cost wakeups)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, int(notsent_lowat_bytes))
            applied["notsent_lowat_bytes"] = int(notsent_lowat_bytes)
        except OSError:
            applied["notsent_lowat_bytes"] = None
    return applied


def probe_zerocopy(sock: socket.socket) -> bool:
    """Whether MSG_ZEROCOPY can be enabled on this socket (Linux >= 4.14)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        return True
    except OSError:
        return False


def bind_source(sock: socket.socket, *, source_address: str | None = None, interface: str | None = None) -> None:
    if interface:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
        except OSError as exc:
            raise ConfigError(f"cannot bind to interface {interface!r}: {exc.strerror}") from None
    if source_address:
        try:
            sock.bind((source_address, 0))
        except OSError as exc:
            raise ConfigError(f"cannot bind to source address {source_address!r}: {exc.strerror}") from None
