"""Socket options for data streams, each with its reason.

Theory of operation
-------------------
``tune_socket`` is called on a fresh stream socket, before ``connect`` (so
the window scale offered in the SYN already reflects the buffer sizes).  It
applies what the path needs and returns a dict of what is *effective*, read
back with ``getsockopt``, for ``--json`` output: the kernel caps, doubles or
refuses values, and the report must say what we got, not what we asked.

Rules
-----
1. Never fatal.  A kernel that lacks an option (older Linux, a container
   without a module) gets the default, and the report says so.  The one
   exception is ``bind_source``: binding to an address or NIC the operator
   named is configuration, and failing to honour it is a ``ConfigError``.
2. Kernel facts come from ``/proc/sys`` and are read when asked for; nothing
   is cached, so a sysctl change is seen by the next stream.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from dwcp.errors import ConfigError

__all__ = [
    "tune_socket",
    "set_buffer_bytes",
    "bind_source",
    "probe_zerocopy",
    "available_congestion_controls",
    "kernel_limits",
    "MIN_BUF_BYTES",
    "MAX_BUF_BYTES",
    "DEFAULT_NOTSENT_LOWAT_BYTES",
]

# Linux values, for Python builds whose socket module lacks the constant.
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
SO_ZEROCOPY = getattr(socket, "SO_ZEROCOPY", 60)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_TCP_CA_NAME_MAX = 16  # include/net/tcp.h
_IFNAMSIZ = 16  # include/uapi/linux/if.h, including the NUL

MIN_BUF_BYTES = 256 * 1024
MAX_BUF_BYTES = 64 * 1024 * 1024
# One default chunk.  128 KiB measured 30-40% slower on loopback (a wakeup
# per 128 KiB for a Python sender thread); 4 MiB matched no limit at all.
DEFAULT_NOTSENT_LOWAT_BYTES = 4 * 1024 * 1024

_PROC = "/proc/sys/net"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _ints(path: str) -> tuple[int, ...] | None:
    v = _read(path)
    if not v:
        return None
    try:
        return tuple(int(x) for x in v.split())
    except ValueError:
        return None


def available_congestion_controls() -> list[str]:
    """The congestion controls the kernel has loaded (empty when /proc is not Linux's)."""
    v = _read(f"{_PROC}/ipv4/tcp_available_congestion_control")
    return v.split() if v else []


def kernel_limits() -> dict:
    """Socket-buffer limits: ``rmem_max``/``wmem_max`` (bytes; the ceiling of an
    explicit SO_RCVBUF/SO_SNDBUF) and the ``tcp_rmem``/``tcp_wmem`` triples
    (min, default, max; the range autotuning moves in).  None where unreadable."""
    rmem = _ints(f"{_PROC}/core/rmem_max")
    wmem = _ints(f"{_PROC}/core/wmem_max")
    tcp_rmem = _ints(f"{_PROC}/ipv4/tcp_rmem")
    tcp_wmem = _ints(f"{_PROC}/ipv4/tcp_wmem")
    return {
        "rmem_max": rmem[0] if rmem else None,
        "wmem_max": wmem[0] if wmem else None,
        "tcp_rmem": list(tcp_rmem) if tcp_rmem and len(tcp_rmem) == 3 else None,
        "tcp_wmem": list(tcp_wmem) if tcp_wmem and len(tcp_wmem) == 3 else None,
    }


def _getsockopt_int(sock: socket.socket, level: int, opt: int) -> int | None:
    try:
        return sock.getsockopt(level, opt)
    except OSError:
        return None


def tune_socket(
    sock: socket.socket,
    *,
    bdp_bytes: int | None = None,
    buffer_bytes: int | None = None,
    congestion: str | None = "bbr",
    notsent_lowat_bytes: int | None = DEFAULT_NOTSENT_LOWAT_BYTES,
    nodelay: bool = True,
) -> dict:
    """Apply the data-stream options to a TCP socket; return what is in effect.

    ``buffer_bytes`` (transport.socket_buffer_bytes) sets SO_SNDBUF and SO_RCVBUF
    to exactly that, whatever the BDP; None or 0 sizes them from ``bdp_bytes``.

    Keys: ``nodelay`` (bool), ``requested_buf_bytes`` (``buffer_bytes``, or 2 x
    BDP clamped to [256 KiB, 64 MiB], or None), ``buffers`` ("autotuned" or "explicit"),
    ``sndbuf_bytes``/``rcvbuf_bytes`` (effective; Linux reports twice what
    was set, for its bookkeeping overhead), ``congestion`` (in use) and
    ``congestion_requested``, ``notsent_lowat_bytes`` (effective or None).
    """
    applied: dict = {}
    if nodelay:
        # frames are written whole; never hold a header back to coalesce it with its payload (Nagle)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    applied["nodelay"] = bool(_getsockopt_int(sock, socket.IPPROTO_TCP, socket.TCP_NODELAY))

    applied["requested_buf_bytes"] = None
    applied["buffers"] = "autotuned"
    if buffer_bytes:
        applied["requested_buf_bytes"] = buffer_bytes
        if set_buffer_bytes(sock, buffer_bytes):
            applied["buffers"] = "explicit"
    elif bdp_bytes:
        # a window of ~2x BDP keeps the pipe full through one loss-recovery RTT.
        size = max(MIN_BUF_BYTES, min(MAX_BUF_BYTES, 2 * int(bdp_bytes)))
        applied["requested_buf_bytes"] = size
        # But an explicit size switches the kernel's autotuning off for that
        # direction (measured ~25% slower on loopback), and is capped at
        # net.core.[rw]mem_max; so set it only where autotuning's ceiling
        # (tcp_[rw]mem max) is below what the path needs.
        lim = kernel_limits()
        for opt, auto in ((socket.SO_SNDBUF, lim["tcp_wmem"]), (socket.SO_RCVBUF, lim["tcp_rmem"])):
            if auto and auto[2] >= size:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
                applied["buffers"] = "explicit"
            except OSError:
                pass
    applied["sndbuf_bytes"] = _getsockopt_int(sock, socket.SOL_SOCKET, socket.SO_SNDBUF)
    applied["rcvbuf_bytes"] = _getsockopt_int(sock, socket.SOL_SOCKET, socket.SO_RCVBUF)

    applied["congestion_requested"] = congestion
    if congestion and congestion in available_congestion_controls():
        # BBR paces at the measured bottleneck rate and does not read random loss as congestion,
        # so a long lossy WAN path keeps its goodput where CUBIC backs off
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, congestion.encode())
        except OSError:
            pass  # not allowed for this user (tcp_allowed_congestion_control): keep the default
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, _TCP_CA_NAME_MAX)
        applied["congestion"] = raw.split(b"\0", 1)[0].decode("ascii", "replace") or None
    except OSError:
        applied["congestion"] = None

    applied["notsent_lowat_bytes"] = None
    if notsent_lowat_bytes:
        # bound the bytes queued unsent in the kernel to about one chunk: a stalled stream then
        # holds at most that much hostage, and the scheduler sees back-pressure early
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, int(notsent_lowat_bytes))
            applied["notsent_lowat_bytes"] = _getsockopt_int(sock, socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)
        except OSError:
            pass
    return applied


def set_buffer_bytes(sock: socket.socket, n: int) -> bool:
    """Set SO_SNDBUF and SO_RCVBUF to ``n`` bytes (the operator's socket_buffer_bytes); True if both took.

    The kernel caps each at net.core.[wr]mem_max and reports twice what it keeps (its bookkeeping);
    an explicit size turns autotuning off for that direction.
    """
    ok = True
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, int(n))
        except OSError:
            ok = False
    return ok


def probe_zerocopy(sock: socket.socket) -> bool:
    """Whether MSG_ZEROCOPY can be used on this socket (Linux >= 4.14, TCP/UDP).

    Sets SO_ZEROCOPY, which MSG_ZEROCOPY sends require; it changes nothing
    for sends without that flag, so a True answer leaves it on.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        return bool(sock.getsockopt(socket.SOL_SOCKET, SO_ZEROCOPY))
    except OSError:
        return False


def bind_source(
    sock: socket.socket, *, source_address: str | None = None, interface: str | None = None
) -> None:
    """Pin a not-yet-connected socket to a NIC and/or a local address.

    Raises ConfigError, naming the setting, when the kernel refuses.
    """
    if interface:
        if len(interface.encode()) >= _IFNAMSIZ or "/" in interface or interface.strip() != interface:
            raise ConfigError(f"interface {interface!r} is not a valid network interface name")
        try:
            # route and source this stream through one NIC, whatever the routing table prefers
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode() + b"\0")
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                why = "no such interface"
            elif exc.errno == errno.EPERM:
                why = "not permitted (needs CAP_NET_RAW)"
            else:
                why = exc.strerror or str(exc)
            raise ConfigError(f"cannot bind to interface {interface!r}: {why}") from None
    if source_address:
        try:
            addr = ipaddress.ip_address(source_address)
        except ValueError:
            raise ConfigError(f"source address {source_address!r} is not an IP address") from None
        if (addr.version == 6) != (sock.family == socket.AF_INET6):
            raise ConfigError(
                f"source address {source_address!r} is IPv{addr.version} but the peer is reached over "
                f"IPv{6 if sock.family == socket.AF_INET6 else 4}"
            )
        try:
            # take the port at connect() time, not at bind(): N streams from one address then share
            # the ephemeral range per destination instead of each reserving a port outright
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        except OSError:
            pass
        try:
            sock.bind((str(addr), 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                why = "not an address of this host"
            else:
                why = exc.strerror or str(exc)
            raise ConfigError(f"cannot bind to source address {source_address!r}: {why}") from None
