"""`dwcp doctor`: what this host's kernel offers a data plane, probed, and what dwcp does with each.

Theory of operation
-------------------
Each probe is a small function that *does* the thing it asks about (a raw
``io_uring_setup``, a ``setsockopt``, a ``splice``, a read of the /proc or
/sys file that holds the fact) and returns a ``ProbeResult``: whether the
feature is available, a one-line detail, the evidence (each call made and
what it returned), and one sentence on what dwcp does with it.  Nothing is
inferred from a kernel version or a module list.  ``run_probes`` runs them
all in a fixed order; ``dwcp.cli.doctor_cmd`` prints them.

Rules
-----
1. A probe never raises.  A refusal the probe expects (ENOSYS, EPERM,
   ENOENT, EAFNOSUPPORT...) is an answer; any other ``OSError`` is
   ``unknown`` with its errno in the evidence.
2. ``available`` answers "could this process use it, here, now":
   ``yes`` it worked (or the fact was read); ``no`` the kernel refused or
   lacks it (EPERM is ``no``, and the detail names the privilege or sysctl
   that would change that); ``unknown`` the probe could not tell.
3. Every file reader takes its root (``proc``, ``sys``) so tests point it at
   a fake tree; every syscall and socket a probe makes goes through a
   parameter (``syscalls``, ``open_socket``, ``splice``, ``tcp_pair``) so
   tests substitute refusals.
4. Probes leave nothing behind: every fd, ring and socket they open is
   closed before they return.
5. The ``dwcp`` sentence says what the code does today, not what it might
   do; when dwcp does not use a feature, it says so.

JSON schema (``dwcp doctor --json``; ``version`` changes when a key does)
------------------------------------------------------------------------
::

    {"version": 1,
     "probes": [{"name": str,             # stable id: "io_uring", "msg_zerocopy", ..., "nic:eth0"
                 "available": str,        # "yes" | "no" | "unknown" (rule 2)
                 "detail": str,           # one line: what was found
                 "evidence": [str, ...],  # each call or read and what it returned, in order
                 "dwcp": str}, ...]}      # what dwcp does with it

Probe names, in order: ``io_uring``, ``msg_zerocopy``, ``splice``,
``af_xdp``, ``so_busy_poll``, ``ktls``, ``congestion_control``,
``hugepages``, ``rdma``, ``socket_buffers``, ``backend``, then one
``nic:<name>`` per network interface but ``lo``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from dwcp.tune.irq import nic_irq_names, parse_interrupts  # one reader for doctor and tune

__all__ = [
    "ProbeResult",
    "Syscalls",
    "SCHEMA_VERSION",
    "AVAILABLE_YES",
    "AVAILABLE_NO",
    "AVAILABLE_UNKNOWN",
    "run_probes",
    "report",
    "probe_io_uring",
    "probe_zerocopy",
    "probe_splice",
    "probe_af_xdp",
    "probe_busy_poll",
    "probe_ktls",
    "probe_congestion",
    "probe_hugepages",
    "probe_rdma",
    "probe_socket_buffers",
    "probe_backend",
    "probe_nics",
    "parse_interrupts",
]

SCHEMA_VERSION = 1
AVAILABLE_YES = "yes"
AVAILABLE_NO = "no"
AVAILABLE_UNKNOWN = "unknown"

PROC = "/proc"
SYS = "/sys"

# Linux values, for Python builds whose socket module lacks the constant.
AF_XDP = getattr(socket, "AF_XDP", 44)
SO_BUSY_POLL = getattr(socket, "SO_BUSY_POLL", 46)
TCP_ULP = getattr(socket, "TCP_ULP", 31)
BUSY_POLL_PROBE_US = 50  # the value the kernel docs suggest for sockets (Documentation/networking)


@dataclass(frozen=True)
class ProbeResult:
    """One probe's answer; ``to_dict`` is its entry in the JSON document (see the module docstring)."""

    name: str
    available: str  # AVAILABLE_YES | AVAILABLE_NO | AVAILABLE_UNKNOWN
    detail: str
    evidence: tuple[str, ...]
    dwcp: str

    def __post_init__(self) -> None:
        if self.available not in (AVAILABLE_YES, AVAILABLE_NO, AVAILABLE_UNKNOWN):
            raise ValueError(f"available must be yes, no or unknown, not {self.available!r}")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "available": self.available,
            "detail": self.detail,
            "evidence": list(self.evidence),
            "dwcp": self.dwcp,
        }


def _err(exc: OSError) -> str:
    """``EPERM (Operation not permitted)``: the errno's name, then its text."""
    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else "no errno"
    return f"{name} ({exc.strerror or os.strerror(code or 0)})"


def _read(path: str) -> tuple[str | None, str]:
    """(content stripped, evidence line); content None when unreadable."""
    try:
        with open(path, errors="replace") as f:
            text = f.read(1 << 20).strip()
    except FileNotFoundError:
        return None, f"read {path} -> absent"
    except OSError as exc:
        return None, f"read {path} -> {_err(exc)}"
    short = text if len(text) <= 80 and "\n" not in text else text.splitlines()[0][:80] + " ..."
    return text, f"read {path} -> {short!r}"


def _refused(name: str, evidence: list[str], call: str, exc: OSError, dwcp: str, *, known: dict[int, str],
             what: str, suffix: str = "") -> ProbeResult:  # fmt: skip
    """``call`` raised ``exc``: an errno in ``known`` is an answer ("no", with its detail); any other is
    "unknown", named as ``what`` failing unexpectedly (rule 1)."""
    evidence.append(f"{call} -> {_err(exc)}")
    detail = known.get(exc.errno) if exc.errno is not None else None
    if detail is not None:
        return ProbeResult(name, AVAILABLE_NO, detail, tuple(evidence), dwcp)
    return ProbeResult(name, AVAILABLE_UNKNOWN, f"{what} failed unexpectedly: {_err(exc)}{suffix}",
                       tuple(evidence), dwcp)  # fmt: skip


def _unexpected(name: str, evidence: list[str], exc: OSError, what: str, dwcp: str) -> ProbeResult:
    return _refused(name, evidence, what, exc, dwcp, known={}, what=what)


# -- io_uring ------------------------------------------------------------------
# Layouts from include/uapi/linux/io_uring.h.


class _SqringOffsets(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in
                ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array", "resv1")] + [
        ("resv2", ctypes.c_uint64)]  # fmt: skip


class _CqringOffsets(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in
                ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags", "resv1")] + [
        ("resv2", ctypes.c_uint64)]  # fmt: skip


class IoUringParams(ctypes.Structure):
    """struct io_uring_params (120 bytes): zeroed in, filled by the kernel on success."""

    _fields_ = [
        ("sq_entries", ctypes.c_uint32),
        ("cq_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("sq_thread_cpu", ctypes.c_uint32),
        ("sq_thread_idle", ctypes.c_uint32),
        ("features", ctypes.c_uint32),
        ("wq_fd", ctypes.c_uint32),
        ("resv", ctypes.c_uint32 * 3),
        ("sq_off", _SqringOffsets),
        ("cq_off", _CqringOffsets),
    ]


class _ProbeOp(ctypes.Structure):
    _fields_ = [("op", ctypes.c_uint8), ("resv", ctypes.c_uint8), ("flags", ctypes.c_uint16),
                ("resv2", ctypes.c_uint32)]  # fmt: skip


PROBE_OPS = 256  # ops[] entries offered; the kernel fills min(this, IORING_OP_LAST)


class IoUringProbe(ctypes.Structure):
    """struct io_uring_probe with room for PROBE_OPS ops (must be zeroed: the kernel checks)."""

    _fields_ = [
        ("last_op", ctypes.c_uint8),
        ("ops_len", ctypes.c_uint8),
        ("resv", ctypes.c_uint16),
        ("resv2", ctypes.c_uint32 * 3),
        ("ops", _ProbeOp * PROBE_OPS),
    ]


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


assert ctypes.sizeof(IoUringParams) == 120 and ctypes.sizeof(IoUringProbe) == 16 + 8 * PROBE_OPS

IORING_REGISTER_BUFFERS = 0
IORING_UNREGISTER_BUFFERS = 1
IORING_REGISTER_PROBE = 8
IO_URING_OP_SUPPORTED = 1 << 0
# The opcodes a data plane would use (enum io_uring_op).
IORING_OPS = {
    "READ_FIXED": 4,
    "WRITE_FIXED": 5,
    "SEND": 26,
    "RECV": 27,
    "SPLICE": 30,
    "SEND_ZC": 47,
    "SENDMSG_ZC": 48,
}
# The unified syscall table (x86-64, aarch64, arm, i386, riscv, ...) since Linux 5.1.  alpha, ia64
# and the mips ABIs number them differently; there the probe says "unknown" rather than guess.
NR_IO_URING_SETUP = 425
NR_IO_URING_REGISTER = 427
_OTHER_SYSCALL_TABLES = ("alpha", "ia64", "mips")
RING_ENTRIES = 4
FIXED_BUFFER_BYTES = 4096

_DWCP_IO_URING = ("[transport] engine = auto: the daemon's receive pump (one loop thread for every stream's "
                  "RAW payloads: RECV into registered 1 MiB slots, WRITE_FIXED, ASYNC_CANCEL of a stalled wait) "
                  "runs on io_uring where a ring sets up with those opcodes, else on epoll; `dwcp status --json` "
                  "says which; sends run one thread per stream (sendmsg)")  # fmt: skip


class Syscalls(Protocol):
    """The raw io_uring calls, each raising OSError(errno) on failure (tests substitute refusals)."""

    def io_uring_setup(self, entries: int, params: IoUringParams) -> int: ...

    def io_uring_register(self, fd: int, opcode: int, arg: Any, nr_args: int) -> int: ...

    def close(self, fd: int) -> None: ...


class LibcSyscalls:
    """``syscall(2)`` through ctypes; no liburing."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall  # AttributeError where libc has no syscall()
        self._syscall.restype = ctypes.c_long

    def _check(self, r: int) -> int:
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r

    def io_uring_setup(self, entries: int, params: IoUringParams) -> int:
        return self._check(
            self._syscall(ctypes.c_long(NR_IO_URING_SETUP), ctypes.c_long(entries), ctypes.byref(params))
        )

    def io_uring_register(self, fd: int, opcode: int, arg: Any, nr_args: int) -> int:
        ptr = ctypes.byref(arg) if arg is not None else None
        return self._check(self._syscall(ctypes.c_long(NR_IO_URING_REGISTER), ctypes.c_long(fd),
                                         ctypes.c_long(opcode), ptr, ctypes.c_long(nr_args)))  # fmt: skip

    def close(self, fd: int) -> None:
        os.close(fd)


def _io_uring_refusal(exc: OSError, disabled: str | None) -> tuple[str, str]:
    """(available, detail) for a failed io_uring_setup."""
    if exc.errno == errno.ENOSYS:
        return AVAILABLE_NO, "io_uring_setup: ENOSYS (a kernel without io_uring, or a seccomp filter)"
    if exc.errno == errno.EPERM:
        if disabled == "2":
            why = "disabled host-wide (kernel.io_uring_disabled = 2)"
        elif disabled == "1":
            why = "restricted to kernel.io_uring_group and CAP_SYS_ADMIN (kernel.io_uring_disabled = 1)"
        else:
            why = "refused (a seccomp filter? container runtimes often block io_uring)"
        return AVAILABLE_NO, f"io_uring_setup: EPERM, {why}"
    if exc.errno == errno.ENOMEM:
        return AVAILABLE_NO, "io_uring_setup: ENOMEM (before Linux 5.12 a ring counts against RLIMIT_MEMLOCK)"
    return AVAILABLE_UNKNOWN, f"io_uring_setup failed unexpectedly: {_err(exc)}"


def probe_io_uring(
    *, proc: str = PROC, syscalls: Syscalls | None = None, machine: str | None = None
) -> ProbeResult:
    """Set up a 4-entry ring, list its opcodes (IORING_REGISTER_PROBE), register one fixed buffer."""
    name = "io_uring"
    ev: list[str] = []
    disabled, line = _read(os.path.join(proc, "sys/kernel/io_uring_disabled"))
    ev.append(line)
    arch = machine if machine is not None else platform.machine()
    if arch.startswith(_OTHER_SYSCALL_TABLES):
        return ProbeResult(name, AVAILABLE_UNKNOWN,
                           f"this probe knows the unified syscall table only, not {arch}'s",
                           tuple(ev), _DWCP_IO_URING)  # fmt: skip
    try:
        sc = syscalls if syscalls is not None else LibcSyscalls()
    except (OSError, AttributeError) as exc:
        ev.append(f"ctypes.CDLL(None).syscall -> {exc}")
        return ProbeResult(name, AVAILABLE_UNKNOWN, "no syscall() in libc", tuple(ev), _DWCP_IO_URING)
    params = IoUringParams()
    call = f"syscall({NR_IO_URING_SETUP} io_uring_setup, {RING_ENTRIES}, &params)"
    try:
        fd = sc.io_uring_setup(RING_ENTRIES, params)
    except OSError as exc:
        ev.append(f"{call} -> {_err(exc)}")
        available, detail = _io_uring_refusal(exc, disabled)
        return ProbeResult(name, available, detail, tuple(ev), _DWCP_IO_URING)
    ev.append(f"{call} -> fd {fd}, sq_entries {params.sq_entries}, features {params.features:#x}")
    parts = [f"ring set up (features {params.features:#x})"]
    try:
        probe = IoUringProbe()
        call = f"syscall({NR_IO_URING_REGISTER} io_uring_register, fd, IORING_REGISTER_PROBE, &probe, {PROBE_OPS})"
        try:
            sc.io_uring_register(fd, IORING_REGISTER_PROBE, probe, PROBE_OPS)
        except OSError as exc:
            ev.append(f"{call} -> {_err(exc)}")
            parts.append(f"opcode probe refused ({_err(exc)}; needs Linux >= 5.6)")
        else:
            n = min(probe.ops_len, PROBE_OPS)
            supported = {probe.ops[i].op for i in range(n) if probe.ops[i].flags & IO_URING_OP_SUPPORTED}
            have = [op for op, code in IORING_OPS.items() if code in supported]
            lack = [op for op in IORING_OPS if op not in have]
            ev.append(f"{call} -> last_op {probe.last_op}, {len(supported)} supported opcodes")
            parts.append("ops " + " ".join(have) + (f"; lacks {' '.join(lack)}" if lack else ""))
        buf = ctypes.create_string_buffer(FIXED_BUFFER_BYTES)
        iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), FIXED_BUFFER_BYTES)
        call = f"io_uring_register(fd, IORING_REGISTER_BUFFERS, &iov{{{FIXED_BUFFER_BYTES} bytes}}, 1)"
        try:
            sc.io_uring_register(fd, IORING_REGISTER_BUFFERS, iov, 1)
        except OSError as exc:
            ev.append(f"{call} -> {_err(exc)}")
            parts.append(f"registered buffers refused ({_err(exc)})")
        else:
            ev.append(f"{call} -> 0")
            parts.append("registered buffers ok")
            try:
                sc.io_uring_register(fd, IORING_UNREGISTER_BUFFERS, None, 0)
                ev.append("io_uring_register(fd, IORING_UNREGISTER_BUFFERS, NULL, 0) -> 0")
            except OSError as exc:  # closing the ring releases them anyway
                ev.append(f"io_uring_register(fd, IORING_UNREGISTER_BUFFERS, NULL, 0) -> {_err(exc)}")
    finally:
        try:
            sc.close(fd)
            ev.append("close(fd) -> 0")
        except OSError as exc:
            ev.append(f"close(fd) -> {_err(exc)}")
    return ProbeResult(name, AVAILABLE_YES, "; ".join(parts), tuple(ev), _DWCP_IO_URING)


# -- sockets -------------------------------------------------------------------

OpenSocket = Callable[..., Any]  # socket.socket's signature (family, type, proto)


def probe_zerocopy(*, open_socket: OpenSocket = socket.socket) -> ProbeResult:
    """SO_ZEROCOPY on a fresh TCP socket, through the sender's own ``sockopts.probe_zerocopy``."""
    from dwcp.transport.sockopts import SO_ZEROCOPY
    from dwcp.transport.sockopts import probe_zerocopy as sockopts_probe

    name = "msg_zerocopy"
    dwcp = ("`dwcp send` (transport.zerocopy = true) sends raw chunk payloads of 64 KiB and up with MSG_ZEROCOPY "
            "on plaintext streams, reusing a buffer once the kernel released it, except to a loopback peer "
            "(the kernel copies there anyway); --json says zerocopy_used, the counts, and how many the kernel "
            "copied")  # fmt: skip
    ev: list[str] = []
    try:
        s = open_socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return _unexpected(name, ev, exc, "socket(AF_INET, SOCK_STREAM)", dwcp)
    try:
        if sockopts_probe(s):
            ev.append(f"setsockopt(SOL_SOCKET, SO_ZEROCOPY={SO_ZEROCOPY}, 1); getsockopt -> 1")
            return ProbeResult(name, AVAILABLE_YES, "SO_ZEROCOPY accepted on a TCP socket", tuple(ev), dwcp)
        try:  # probe_zerocopy keeps no errno: ask once more, for the evidence
            s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            ev.append(f"setsockopt(SOL_SOCKET, SO_ZEROCOPY={SO_ZEROCOPY}, 1) -> 0, getsockopt -> 0")
            return ProbeResult(name, AVAILABLE_NO, "SO_ZEROCOPY does not stick", tuple(ev), dwcp)
        except OSError as exc:
            refused = f"SO_ZEROCOPY refused: {_err(exc)} (Linux < 4.14?)"
            return _refused(name, ev, f"setsockopt(SOL_SOCKET, SO_ZEROCOPY={SO_ZEROCOPY}, 1)", exc, dwcp,
                            known=dict.fromkeys((errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL), refused),
                            what="SO_ZEROCOPY")  # fmt: skip
    finally:
        s.close()


SPLICE_PROBE = b"dwcp doctor splice probe"


def probe_splice(
    *,
    splice: Callable[..., int] | None = None,
    socketpair: Callable[[], tuple[Any, Any]] = socket.socketpair,
) -> ProbeResult:
    """Bytes written into a socketpair, spliced socket -> pipe, read back from the pipe."""
    name = "splice"
    dwcp = ("not used: a plaintext raw chunk goes socket -> 1 MiB slot -> file in the native recv kernel, each "
            "block hashed while in cache; splice saves the copy into the slot but then the chunk must be read "
            "back to be verified, which cost more (measured)")  # fmt: skip
    ev: list[str] = []
    fn = splice if splice is not None else getattr(os, "splice", None)
    if fn is None:
        ev.append("os.splice -> absent (not Linux, or Python < 3.10)")
        return ProbeResult(name, AVAILABLE_NO, "no os.splice in this Python", tuple(ev), dwcp)
    try:
        a, b = socketpair()
    except OSError as exc:
        return _unexpected(name, ev, exc, "socketpair()", dwcp)
    fds: tuple[int, int] | None = None
    try:
        fds = os.pipe()
        a.sendall(SPLICE_PROBE)
        call = f"splice(socket, pipe, {len(SPLICE_PROBE)})"
        try:
            n = fn(b.fileno(), fds[1], len(SPLICE_PROBE))
        except OSError as exc:
            return _refused(name, ev, call, exc, dwcp, what="splice",
                            known=dict.fromkeys((errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP),
                                                f"splice refused: {_err(exc)}"))  # fmt: skip
        got = os.read(fds[0], len(SPLICE_PROBE)) if n > 0 else b""
        ev.append(
            f"{call} -> {n}; read(pipe) -> {len(got)} bytes, {'equal' if got == SPLICE_PROBE[:n] else 'DIFFERENT'}"
        )
        if n > 0 and got == SPLICE_PROBE[:n]:
            return ProbeResult(name, AVAILABLE_YES, "socket -> pipe splice moved the bytes intact",
                               tuple(ev), dwcp)  # fmt: skip
        return ProbeResult(
            name, AVAILABLE_UNKNOWN, "splice returned, but not the bytes sent", tuple(ev), dwcp
        )
    except OSError as exc:
        return _unexpected(name, ev, exc, "pipe/send/read around splice", dwcp)
    finally:
        a.close()
        b.close()
        if fds is not None:
            os.close(fds[0])
            os.close(fds[1])


def probe_af_xdp(*, open_socket: OpenSocket = socket.socket) -> ProbeResult:
    """socket(AF_XDP, SOCK_RAW): the kernel has XDP sockets and lets this process open one."""
    name = "af_xdp"
    dwcp = "not used: every stream is a kernel TCP socket"
    ev: list[str] = []
    call = f"socket(AF_XDP={AF_XDP}, SOCK_RAW, 0)"
    try:
        s = open_socket(AF_XDP, socket.SOCK_RAW, 0)
    except OSError as exc:
        return _refused(name, ev, call, exc, dwcp, what="socket(AF_XDP)",
                        known={errno.EAFNOSUPPORT: "no XDP sockets in this kernel (CONFIG_XDP_SOCKETS)",
                               errno.EPERM: "EPERM: opening an XDP socket needs CAP_NET_RAW"})  # fmt: skip
    s.close()
    ev.append(f"{call} -> fd; closed")
    return ProbeResult(name, AVAILABLE_YES, "an XDP socket opened", tuple(ev), dwcp)


def probe_busy_poll(*, proc: str = PROC, open_socket: OpenSocket = socket.socket) -> ProbeResult:
    """SO_BUSY_POLL = 50 us on a TCP socket, and the host-wide net.core.busy_{poll,read}."""
    name = "so_busy_poll"
    dwcp = "not used: dwcp sets no SO_BUSY_POLL; net.core.busy_read/busy_poll apply to its sockets as to any"
    ev: list[str] = []
    knobs = []
    for sysctl in ("busy_read", "busy_poll"):
        v, line = _read(os.path.join(proc, "sys/net/core", sysctl))
        ev.append(line)
        if v is not None:
            knobs.append(f"net.core.{sysctl} = {v}")
    host = f" ({', '.join(knobs)})" if knobs else ""
    try:
        s = open_socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return _unexpected(name, ev, exc, "socket(AF_INET, SOCK_STREAM)", dwcp)
    call = f"setsockopt(SOL_SOCKET, SO_BUSY_POLL={SO_BUSY_POLL}, {BUSY_POLL_PROBE_US})"
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, BUSY_POLL_PROBE_US)
    except OSError as exc:
        return _refused(name, ev, call, exc, dwcp, what="SO_BUSY_POLL", suffix=host,
                        known={errno.EPERM: f"EPERM: raising SO_BUSY_POLL needs CAP_NET_ADMIN{host}",
                               **dict.fromkeys((errno.ENOPROTOOPT, errno.EOPNOTSUPP),
                                               f"no busy polling in this kernel: {_err(exc)}{host}")})  # fmt: skip
    finally:
        s.close()
    ev.append(f"{call} -> 0")
    return ProbeResult(name, AVAILABLE_YES, f"SO_BUSY_POLL {BUSY_POLL_PROBE_US} us accepted{host}",
                       tuple(ev), dwcp)  # fmt: skip


def loopback_tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1 (client, server side); the listener is closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            c.settimeout(2)
            c.connect(ls.getsockname())
            ls.settimeout(2)
            s, _ = ls.accept()
        except OSError:
            c.close()
            raise
    return c, s


def probe_ktls(*, tcp_pair: Callable[[], tuple[Any, Any]] = loopback_tcp_pair) -> ProbeResult:
    """setsockopt(TCP_ULP, "tls") on a connected loopback TCP socket: the kernel's tls module answers."""
    name = "ktls"
    dwcp = ("not used: Python's ssl has no kTLS control here; data streams instead seal AES-256-GCM records "
            "of up to a chunk keyed through their TLS session (security.data_records), the control stream "
            "stays TLS")  # fmt: skip
    ev: list[str] = []
    try:
        c, s = tcp_pair()
    except OSError as exc:
        return _unexpected(name, ev, exc, "connect a loopback TCP pair", dwcp)
    call = f'setsockopt(IPPROTO_TCP, TCP_ULP={TCP_ULP}, "tls")'
    try:
        c.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as exc:
        return _refused(name, ev, call, exc, dwcp, what="TCP_ULP tls",
                        known={errno.ENOENT: "ENOENT: no tls ULP (modprobe tls; CONFIG_TLS)",
                               errno.ENOPROTOOPT: "ENOPROTOOPT: no TCP_ULP in this kernel (< 4.13)"})  # fmt: skip
    finally:
        c.close()
        s.close()
    ev.append(f"{call} -> 0")
    return ProbeResult(name, AVAILABLE_YES, "the kernel's tls ULP attached to a TCP socket", tuple(ev), dwcp)


# -- kernel facts ----------------------------------------------------------------


def probe_congestion(
    *, proc: str = PROC, want: str = "bbr", open_socket: OpenSocket = socket.socket
) -> ProbeResult:
    """The congestion controls loaded and the default, then ``want`` set on a TCP socket and read back."""
    from dwcp.transport.sockopts import _TCP_CA_NAME_MAX, TCP_CONGESTION
    from dwcp.tune import read_sysctls

    name = "congestion_control"
    dwcp = (f"each stream asks for transport.congestion (default {want}) when the kernel lists it, "
            "else keeps the default; `dwcp tune` says how to load bbr")  # fmt: skip
    ev: list[str] = []
    proc_sys = os.path.join(proc, "sys")
    for rel in ("net/ipv4/tcp_available_congestion_control", "net/ipv4/tcp_congestion_control",
                "net/ipv4/tcp_allowed_congestion_control"):  # fmt: skip
        ev.append(_read(os.path.join(proc_sys, rel))[1])
    sysctls = read_sysctls(proc_sys)
    have = sysctls.available_congestion_control
    default = sysctls.congestion_control or "unknown"
    listed = (f"have {' '.join(have) or 'none'}; default {default}" if have is not None
              else f"available list unreadable; default {default}")  # fmt: skip
    if have is not None and want not in have:
        # as dwcp does: do not ask for it (as root, asking would load the module: a side effect)
        return ProbeResult(name, AVAILABLE_NO, f"{want} not loaded (modprobe tcp_{want}); {listed}",
                           tuple(ev), dwcp)  # fmt: skip
    try:
        s = open_socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return _unexpected(name, ev, exc, "socket(AF_INET, SOCK_STREAM)", dwcp)
    call = f'setsockopt(IPPROTO_TCP, TCP_CONGESTION, "{want}")'
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, want.encode())
        raw = s.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, _TCP_CA_NAME_MAX)
        got = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    except OSError as exc:
        return _refused(name, ev, call, exc, dwcp, what="TCP_CONGESTION", suffix=f"; {listed}",
                        known={errno.ENOENT: f"{want} not loaded (modprobe tcp_{want}); {listed}",
                               errno.EPERM: f"{want} not in tcp_allowed_congestion_control for this user "
                                            f"(EPERM; needs CAP_NET_ADMIN); {listed}"})  # fmt: skip
    finally:
        s.close()
    ev.append(f"{call} -> 0; getsockopt(TCP_CONGESTION) -> {got!r}")
    ok = got == want
    return ProbeResult(name, AVAILABLE_YES if ok else AVAILABLE_NO,
                       f"{want} {'settable' if ok else f'did not stick (got {got})'}; {listed}",
                       tuple(ev), dwcp)  # fmt: skip


def _meminfo_kib(text: str, key: str) -> int | None:
    for line in text.splitlines():
        k, _, rest = line.partition(":")
        if k.strip() == key:
            try:
                return int(rest.split()[0])
            except (ValueError, IndexError):
                return None
    return None


def _thp_mode(text: str | None) -> str | None:
    """``always [madvise] never`` -> ``madvise`` (the bracketed word)."""
    if text is None or "[" not in text:
        return None
    return text.split("[", 1)[1].split("]", 1)[0] or None


def probe_hugepages(*, proc: str = PROC, sys: str = SYS) -> ProbeResult:
    """Reserved huge pages (/proc/meminfo) and the transparent huge page mode."""
    name = "hugepages"
    ev: list[str] = []
    meminfo, _ = _read(os.path.join(proc, "meminfo"))
    total = size_kib = None
    if meminfo is None:
        ev.append(f"read {os.path.join(proc, 'meminfo')} -> unreadable")
    else:
        total = _meminfo_kib(meminfo, "HugePages_Total")
        size_kib = _meminfo_kib(meminfo, "Hugepagesize")
        ev.append(
            f"read {os.path.join(proc, 'meminfo')} -> HugePages_Total: {total}, Hugepagesize: {size_kib} kB"
        )
    thp_text, line = _read(os.path.join(sys, "kernel/mm/transparent_hugepage/enabled"))
    ev.append(line)
    thp = _thp_mode(thp_text)
    parts = [f"HugePages_Total {total if total is not None else 'unknown'}"
             + (f" x {size_kib} kB" if total and size_kib else ""),
             f"THP {thp or 'unknown'}" + (" (only regions that madvise)" if thp == "madvise" else "")]  # fmt: skip
    if thp == "always":
        then = "but THP 'always' may back dwcp's large anonymous buffers with huge pages on its own"
    elif thp is None:
        then = "and whether THP backs its buffers anyway is unknown"
    else:
        then = "so its buffers use base pages here"
    dwcp = f"not requested: no MAP_HUGETLB and no madvise(MADV_HUGEPAGE), {then}"
    if total is None and thp is None:
        available = AVAILABLE_UNKNOWN
    elif (total or 0) > 0 or thp in ("always", "madvise"):
        available = AVAILABLE_YES
    else:
        available = AVAILABLE_NO
    return ProbeResult(name, available, "; ".join(parts), tuple(ev), dwcp)


def probe_rdma(*, sys: str = SYS) -> ProbeResult:
    """The RDMA devices /sys/class/infiniband lists (RoCE and iWARP NICs appear there too)."""
    name = "rdma"
    dwcp = "not used: dwcp moves bytes over TCP only"
    path = os.path.join(sys, "class/infiniband")
    try:
        devices = sorted(os.listdir(path))
    except FileNotFoundError:
        return ProbeResult(name, AVAILABLE_NO, "no RDMA devices (no /sys/class/infiniband)",
                           (f"listdir {path} -> absent",), dwcp)  # fmt: skip
    except OSError as exc:
        return _unexpected(name, [], exc, f"listdir {path}", dwcp)
    ev = (f"listdir {path} -> {devices}",)
    if not devices:
        return ProbeResult(name, AVAILABLE_NO, "no RDMA devices", ev, dwcp)
    return ProbeResult(name, AVAILABLE_YES, "RDMA devices: " + " ".join(devices), ev, dwcp)


def probe_socket_buffers(*, proc: str = PROC) -> ProbeResult:
    """net.core.rmem_max/wmem_max (the cap of an explicit buffer) and net.ipv4.tcp_rmem/tcp_wmem."""
    from dwcp.tune import read_sysctls
    from dwcp.tune.nic import SYSCTL_FILES

    name = "socket_buffers"
    dwcp = ("streams leave buffers to autotuning up to tcp_[rw]mem max; an explicit size "
            "(transport.socket_buffer_bytes, or a BDP beyond that max) is capped at net.core.[rw]mem_max; "
            "`dwcp tune --rtt-ms` says which to raise")  # fmt: skip
    proc_sys = os.path.join(proc, "sys")
    names = ("net.core.rmem_max", "net.core.wmem_max", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem")
    ev = tuple(_read(os.path.join(proc_sys, SYSCTL_FILES[n]))[1] for n in names)
    s = read_sysctls(proc_sys)

    def mib(n: int | None) -> str:
        return "unknown" if n is None else f"{n / (1 << 20):g} MiB"

    detail = (f"rmem_max {mib(s.rmem_max_bytes)}, wmem_max {mib(s.wmem_max_bytes)}, "
              f"tcp_rmem max {mib(s.tcp_rmem_bytes[2] if s.tcp_rmem_bytes else None)}, "
              f"tcp_wmem max {mib(s.tcp_wmem_bytes[2] if s.tcp_wmem_bytes else None)}")  # fmt: skip
    values = (s.rmem_max_bytes, s.wmem_max_bytes, s.tcp_rmem_bytes, s.tcp_wmem_bytes)
    if all(v is None for v in values):
        return ProbeResult(name, AVAILABLE_UNKNOWN, "no socket-buffer sysctl readable", ev, dwcp)
    return ProbeResult(name, AVAILABLE_YES, detail, ev, dwcp)


def probe_backend() -> ProbeResult:
    """``dwcp.backend`` and ``dwcp.backend_features``: the kernels this process runs."""
    import dwcp

    features = ", ".join(f"{k}={v}" for k, v in sorted(dwcp.backend_features.items()))
    ev = (f"dwcp.backend -> {dwcp.backend!r}", f"dwcp.backend_features -> {dwcp.backend_features!r}")
    what = ("the Cython kernels (chunk hashing, XOR+ZRLE delta, framing, ring buffers)"
            if dwcp.backend == "fast" else "the pure-Python reference kernels (slow; DWCP_IMPL=ref)")  # fmt: skip
    return ProbeResult("backend", AVAILABLE_YES, f"{dwcp.backend} ({features})", ev, f"runs {what}")


# -- NICs ----------------------------------------------------------------------


def probe_nics(*, proc: str = PROC, sys: str = SYS) -> list[ProbeResult]:
    """One result per NIC but lo: rx/tx queue counts (sysfs) and each queue IRQ's CPU affinity."""
    from dwcp.tune.nic import read_sysfs, sysfs_names

    net = os.path.join(sys, "class/net")
    interrupts, irq_line = _read(os.path.join(proc, "interrupts"))
    out = []
    for nic in sysfs_names(net):
        if nic == "lo":
            continue
        info = read_sysfs(nic, net)
        ev = [f"listdir {os.path.join(net, nic, 'queues')} -> {info.rx_queues or 0} rx-*, "
              f"{info.tx_queues or 0} tx-*"]  # fmt: skip
        irq_names = nic_irq_names(nic, net)
        irqs = parse_interrupts(interrupts, irq_names) if interrupts is not None else []
        ev.append(f"{irq_line.split(' -> ')[0]} -> {len(irqs)} lines naming {'/'.join(irq_names)}"
                  if interrupts is not None else irq_line)  # fmt: skip
        pins = []
        for irq, action in irqs:
            cpus, line = _read(os.path.join(proc, "irq", str(irq), "smp_affinity_list"))
            ev.append(line)
            pins.append(f"{irq} ({action}) -> CPU {cpus if cpus is not None else 'unknown'}")
        tx = info.tx_queues
        dwcp = (f"`dwcp tune` sets max_streams >= max(4, 2 x {tx} tx queues) on it; " if tx
                else "`dwcp tune` counts its tx queues as 1 (unknown); ") + (
                    "a send's stream threads are pinned to its tx IRQs' CPUs (the applied profile); no IRQ is moved"
                    if tx and tx > 1 else "single tx queue: no stream thread is pinned; no IRQ is moved")  # fmt: skip
        if info.rx_queues is None and info.tx_queues is None:
            available, detail = AVAILABLE_UNKNOWN, "queues unreadable"
        else:
            available = AVAILABLE_YES
            detail = f"{info.rx_queues or 0} rx / {info.tx_queues or 0} tx queues"
            if info.driver:
                detail += f", driver {info.driver}"
        detail += "; IRQs: " + ("; ".join(pins) if pins else "none named for it in /proc/interrupts")
        out.append(ProbeResult(f"nic:{nic}", available, detail, tuple(ev), dwcp))
    return out


# -- all -------------------------------------------------------------------------


def run_probes(*, proc: str = PROC, sys: str = SYS) -> list[ProbeResult]:
    """Every probe, in the documented order (fast: a ring, a few sockets, a few files)."""
    return [
        probe_io_uring(proc=proc),
        probe_zerocopy(),
        probe_splice(),
        probe_af_xdp(),
        probe_busy_poll(proc=proc),
        probe_ktls(),
        probe_congestion(proc=proc),
        probe_hugepages(proc=proc, sys=sys),
        probe_rdma(sys=sys),
        probe_socket_buffers(proc=proc),
        probe_backend(),
        *probe_nics(proc=proc, sys=sys),
    ]


def report(results: Iterable[ProbeResult]) -> dict:
    """The ``--json`` document (schema in the module docstring)."""
    return {"version": SCHEMA_VERSION, "probes": [r.to_dict() for r in results]}
