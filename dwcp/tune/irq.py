"""A NIC's queue IRQs and the CPUs they run on: /proc/interrupts and /proc/irq/N/*affinity_list.

Shared by ``dwcp tune`` (the profile's ``tx_irq_cpus``, which the sender pins
its stream threads to), the daemon (``rx_irq_cpus``: where its receive loops
run, ``dwcp.transport.engine.receive_cpus``) and ``dwcp doctor`` (the
per-NIC probe).

Rules
-----
1. Parsers are pure (text in, facts out); the one reader takes its roots
   (``proc``, ``net``) so tests point it at a fake tree.
2. Never fatal: an unreadable /proc/interrupts is "unknown" (None), a NIC
   with no IRQ named for it is "none" (an empty tuple), an unreadable
   ``smp_affinity_list`` costs that IRQ only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = [
    "PROC",
    "parse_interrupts",
    "parse_cpu_list",
    "nic_irq_names",
    "is_tx_irq",
    "is_rx_irq",
    "read_tx_irq_cpus",
    "read_rx_irq_cpus",
]

PROC = "/proc"
SYSFS_NET = "/sys/class/net"


def parse_interrupts(text: str, names: Iterable[str]) -> list[tuple[int, str]]:
    """(irq, action name) for each numbered line of /proc/interrupts whose action names one of ``names``.

    An action matches when it is one of ``names`` or starts with one followed by ``-``, ``_``,
    ``.`` or ``@`` (``eth0``, ``eth0-TxRx-0``, ``virtio2-input.0``).  Drivers that name vectors
    after the PCI device alone (mlx5's ``mlx5_comp0@pci:...``) are not matched: none here.
    """
    wanted = tuple(n for n in names if n)
    out = []
    for line in text.splitlines():
        head, _, rest = line.partition(":")
        if not head.strip().isdigit():
            continue
        fields = rest.split()
        if not fields:
            continue
        action = fields[-1]
        for n in wanted:
            if action == n or (action.startswith(n) and action[len(n)] in "-_.@"):
                out.append((int(head), action))
                break
    return out


def parse_cpu_list(text: str | None) -> tuple[int, ...] | None:
    """``0-3,8,10-11`` (a cpulist, as in smp_affinity_list) -> (0, 1, 2, 3, 8, 10, 11); None if garbled."""
    if text is None or not text.strip():
        return None
    cpus: set[int] = set()
    for part in text.strip().split(","):
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            return None
        if a < 0 or b < a or b - a > 65536:
            return None
        cpus.update(range(a, b + 1))
    return tuple(sorted(cpus))


def nic_irq_names(name: str, net: str = SYSFS_NET) -> list[str]:
    """What a NIC's queue IRQ actions start with: its name, and for virtio_net its device's
    ``virtioN-input``/``virtioN-output`` (``virtio2-input.0``; ``virtio2-config`` is no queue's).

    ``net`` is the /sys/class/net directory."""
    names = [name]
    try:
        dev = os.path.basename(os.readlink(os.path.join(net, name, "device")))
    except OSError:
        return names
    if dev.startswith("virtio"):
        names += [f"{dev}-input", f"{dev}-output"]
    return names


_TX, _RX = ("tx", "output"), ("rx", "input")  # the words a tx / an rx queue's IRQ action carries


def _serves(action: str, mine: tuple[str, str], other: tuple[str, str]) -> bool:
    a = action.lower()
    return any(w in a for w in mine) or not any(w in a for w in (*other, "config"))


def is_tx_irq(action: str) -> bool:
    """Whether an IRQ action serves a transmit queue: a tx (``eth0-tx-0``, ``virtio2-output.0``) or
    combined (``eth0-TxRx-0``, a bare ``eth0-0``) queue; not an rx-only one nor a device's config vector."""
    return _serves(action, _TX, _RX)


def is_rx_irq(action: str) -> bool:
    """The same for a receive queue: ``eth0-rx-0``, ``virtio2-input.0``, combined ones; not tx-only."""
    return _serves(action, _RX, _TX)


def read_tx_irq_cpus(name: str, *, proc: str = PROC, net: str = SYSFS_NET) -> tuple[int, ...] | None:
    """The CPUs (sorted, each once) that the IRQs of ``name``'s transmit queues are delivered on.

    None when /proc/interrupts is unreadable; () when it names no tx-queue IRQ of this NIC
    (``lo``, veth, or a driver this reader does not know) or no affinity could be read."""
    return _queue_irq_cpus(name, is_tx_irq, proc, net)


def read_rx_irq_cpus(name: str, *, proc: str = PROC, net: str = SYSFS_NET) -> tuple[int, ...] | None:
    """The same for ``name``'s receive queues: where its received packets are processed."""
    return _queue_irq_cpus(name, is_rx_irq, proc, net)


def _queue_irq_cpus(name: str, keep, proc: str, net: str) -> tuple[int, ...] | None:
    try:
        with open(os.path.join(proc, "interrupts"), errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    cpus: set[int] = set()
    for irq, action in parse_interrupts(text, nic_irq_names(name, net)):
        if keep(action):
            cpus.update(_irq_cpus(proc, irq) or ())
    return tuple(sorted(cpus))


def _irq_cpus(proc: str, irq: int) -> tuple[int, ...] | None:
    # effective_affinity_list first: the CPU the kernel delivers on (x86 picks one of the allowed
    # set: smp_affinity_list 0-1, effective 0); smp_affinity_list where the kernel lacks it (< 4.15)
    for name in ("effective_affinity_list", "smp_affinity_list"):
        try:
            with open(os.path.join(proc, "irq", str(irq), name)) as f:
                got = parse_cpu_list(f.read(4096))
        except OSError:
            continue
        if got:
            return got
    return None
