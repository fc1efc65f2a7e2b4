"""Which engine moves a node's bulk payloads, chosen by probe and reported (``[transport] engine``):
the daemon receives through it, and each send (``dwcp send``, the daemon's relays) sends through one.

* ``uring``: the pump (dwcp/_fast/pump.h) on io_uring -- one loop thread RECVs every stream's RAW
  payload into registered 1 MiB slots and WRITE_FIXEDs them to the .part, hashing (and opening
  sealed records) in between;
* ``epoll``: the same pump on epoll + recv + pwrite;
* ``threads``: no pump -- each stream's own thread runs the receive kernel (``recv_blocks``, GIL
  released), the engine before the pump;
* ``auto`` (the default): ``uring`` where io_uring starts and has the opcodes, else ``epoll``.

On the reference backend (``DWCP_IMPL=ref``) the pump is its pure-Python twin, and ``auto`` is
``epoll`` (the twin's ``uring`` drives an emulated ring; ``uring`` names it explicitly, for tests).  Headers, control
frames and delta payloads stay on the stream threads (the sans-IO session decides; the pump moves
bytes); the pump carries the plaintext and sealed RAW payloads, which are nearly all the bytes of a
full send.  A sender's pump sends every stream's large payloads (plain from the source's buffer, sealed
a block at a time through its slots), except on streams that send MSG_ZEROCOPY (transport.zerocopy, off
loopback): those keep their own thread, which reads the socket's completions.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import dwcp
from dwcp.config import ENGINES
from dwcp.errors import ConfigError

log = logging.getLogger("dwcp.engine")


@dataclass
class Engine:
    """The engine a node runs: its kind, why, and its pumps (none for ``threads``): one loop each,
    streams spread over them round-robin (``pick``)."""

    kind: str
    reason: str
    pumps: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._next = itertools.count()
        self.cpus: list[int] | None = None  # where pin() put the loops
        self.cpus_why = ""  # where those come from, or why the loops are not pinned

    def pick(self) -> Any:
        """The pump for the next stream (round-robin; None for ``threads``)."""
        if not self.pumps:
            return None
        return self.pumps[next(self._next) % len(self.pumps)]

    def info(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "reason": self.reason, "backend": dwcp.backend}
        if self.pumps:
            infos = [p.info() for p in self.pumps]
            out.update(
                {k: v for k, v in infos[0].items() if k not in ("kind", "jobs", "bytes", "ops", "wakeups")}
            )
            out["loops"] = len(self.pumps)
            out["cpus"] = self.cpus
            out["cpus_why"] = self.cpus_why
            for k in ("jobs", "bytes", "ops", "wakeups"):
                out[k] = sum(i.get(k, 0) for i in infos)
        return out

    def pin(self, cpus, whose: str, why: str = "") -> None:
        """Run every loop on ``cpus`` (``why``: where they come from, or why there are none); a
        refusal is logged (``whose`` loops) and leaves them unpinned.  ``info()`` says which."""
        self.cpus_why = why
        if not self.pumps or not cpus:
            return
        try:
            for p in self.pumps:
                os.sched_setaffinity(p.native_id, cpus)
        except (AttributeError, OSError, ValueError) as exc:
            log.warning(
                "could not pin %s engine loops to CPUs %s: %s; they run anywhere", whose, list(cpus), exc
            )
            self.cpus_why = f"pinning to {list(cpus)} ({why}) failed: {exc}"
            return
        self.cpus = sorted(cpus)

    def close(self) -> None:
        for p in self.pumps:
            p.close()


def fs_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem ``path`` is on ("tmpfs", "ext4"...), from the mount table's longest
    mount point above it; None where the table cannot be read."""
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, kind = -1, None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mnt = fields[4].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > best:
            best, kind = len(mnt), right.split()[0] if right.split() else None
    return kind


def receive_cpus(
    nic: str | None,
    found: str,
    *,
    rx_queues: int | None,
    rx_irq_cpus: tuple[int, ...] | None,
    allowed: set[int] | None,
) -> tuple[tuple[int, ...] | None, str]:
    """Where a daemon's receive loops run, and why (the ``dwcp tune`` rule for a send's threads,
    applied to the NIC streams arrive on): on the CPUs its rx-queue IRQs are delivered on, where
    the softirq that fills the sockets runs and leaves the data in cache, when the NIC has more
    than one rx queue; on a single queue one IRQ serves every stream and nothing is pinned.

    ``nic``: the ingress NIC (None: unknown, ``found`` says why); ``allowed``: the CPUs this
    process may run on (None: unknown, all)."""
    if nic is None:
        return None, f"not pinned: {found}"
    if nic == "lo":
        return None, "not pinned: loopback has no NIC queue (the sender's CPU does the receive softirq)"
    if not rx_queues or rx_queues < 2:
        return None, f"not pinned: {nic} ({found}) has {rx_queues or 'an unknown number of'} rx queue(s)"
    if not rx_irq_cpus:
        return None, f"not pinned: no rx-queue IRQ of {nic} found in /proc/interrupts"
    cpus = tuple(c for c in rx_irq_cpus if allowed is None or c in allowed)
    if not cpus:
        return (
            None,
            f"not pinned: {nic}'s rx-queue IRQ CPUs {list(rx_irq_cpus)} are not ones this process may use",
        )
    return cpus, f"the rx-queue IRQ CPUs of {nic} ({found}, {rx_queues} rx queues)"


def read_receive_cpus(host: str) -> tuple[tuple[int, ...] | None, str]:
    """``receive_cpus`` for a daemon listening on ``host``, from this host's facts (netlink, /proc)."""
    import ipaddress

    try:
        if ipaddress.ip_address(host).is_loopback:
            return receive_cpus("lo", "", rx_queues=None, rx_irq_cpus=None, allowed=None)
    except ValueError:
        pass
    from dwcp.tune.irq import read_rx_irq_cpus
    from dwcp.tune.nic import ingress_nic, read_nics

    nic, found = ingress_nic(host)
    if nic is None or nic == "lo":
        return receive_cpus(nic, found, rx_queues=None, rx_irq_cpus=None, allowed=None)
    info = read_nics([nic])
    try:
        allowed: set[int] | None = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    return receive_cpus(nic, found, rx_queues=info[0].rx_queues if info else None,
                        rx_irq_cpus=read_rx_irq_cpus(nic), allowed=allowed)  # fmt: skip


def default_loops() -> int:
    """One loop per CPU this process may run on, up to 4: a loop copies, hashes and writes on one core."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def start_engine(setting: str, slots: int, *, loops: int = 0, register: bool = True) -> Engine:
    """Start the engine ``setting`` names with ``loops`` pumps (0: ``default_loops()``); ConfigError
    when an explicit kind cannot run here.  ``register``: io_uring slots as registered buffers (the
    receiver's WRITE_FIXED; a sender, which only seals into its slots, leaves them unpinned)."""
    from dwcp._backend import impl

    if setting not in ENGINES:
        raise ConfigError(f"transport.engine {setting!r}: expected one of {', '.join(ENGINES)}")
    if setting == "threads":
        return Engine("threads", "transport.engine = threads: each stream's thread moves its own payloads")
    n = loops or default_loops()
    twin = " (the pure-Python twin: DWCP_IMPL=ref)" if dwcp.backend == "ref" else ""
    why = "transport.engine = epoll"
    if setting == "auto" and not impl.uring_available():
        why = "io_uring unavailable" + (" (the reference backend emulates it)" if twin else "")
    elif setting in ("uring", "auto"):
        pumps: list = []
        try:
            for _ in range(n):
                pumps.append(impl.Pump("uring", slots, register=register))
        except OSError as exc:
            for p in pumps:
                p.close()
            if setting == "uring":
                raise ConfigError(
                    f"transport.engine = uring: io_uring cannot run here ({exc.strerror or exc}); "
                    "hint: set engine = auto (or epoll), and see `dwcp doctor`"
                ) from exc
            why = f"io_uring unavailable ({exc.strerror or exc})"
        else:
            info = pumps[0].info()
            how = "registered slots"
            if twin:
                how = "an emulated ring"
            elif not register:
                how = "its slots unregistered (nothing is written from them with io_uring)"
            elif not info.get("registered"):
                how = f"unregistered slots (registering them: {os.strerror(info['register_errno'] or 0)})"
            return Engine("uring", f"{setting}: io_uring, {how}, {n} loop(s){twin}", pumps)
    pumps = [impl.Pump("epoll", slots) for _ in range(n)]
    return Engine("epoll", f"{why}: epoll + recv + pwrite, {n} loop(s){twin}", pumps)
