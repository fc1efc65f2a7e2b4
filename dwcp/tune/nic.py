"""What this host's NICs and kernel offer: the I/O half of ``dwcp tune``.

Theory of operation
-------------------
Each fact has a first source and a fallback:

==================  ========================================  ==========================
fact                first                                     fallback
==================  ========================================  ==========================
names, MTU,         netlink (pyroute2 ``IPRoute.get_links``)  /sys/class/net/IF/{mtu,
carrier, operstate                                            carrier,operstate}
speed, duplex       ethtool (pyroute2 ``Ethtool.get_link_     /sys/class/net/IF/{speed,
                    mode``: ethtool-netlink, else the ioctl)  duplex}
tx/rx queues        ethtool channels (the queues in use)      sysfs ``queues/{tx,rx}-N``,
                                                              then netlink num_*_queues
offloads            ethtool ``get_features().offload_flags``  none (sysfs has no offloads)
driver              /sys/class/net/IF/device/driver           none (virtual NICs have none)
tx IRQ CPUs         /proc/interrupts, then each tx queue      none (``dwcp.tune.irq``)
                    IRQ's /proc/irq/N/smp_affinity_list
==================  ========================================  ==========================

Rules
-----
1. Never fatal.  Virtual NICs (lo, veth, bridges, ifb, TUN) answer
   EOPNOTSUPP, EINVAL (``speed`` without carrier) or -1: that fact is None,
   "unknown", and the rest of the NIC is still reported.
2. Each reader takes its root (``sysfs_root``, ``proc_sys``, ``proc``) so
   tests point it at a fake tree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .irq import PROC, read_tx_irq_cpus

__all__ = [
    "NicInfo",
    "read_nics",
    "read_sysfs",
    "sysfs_names",
    "read_sysctl_texts",
    "egress_nic",
    "SYSCTL_FILES",
]

log = logging.getLogger("dwcp.tune")

SYSFS_NET = "/sys/class/net"
PROC_SYS = "/proc/sys"
MAX_SANE_SPEED_MBIT_S = 10_000_000  # above 10 Pbit/s is garbage (e.g. an unsigned -1)
# ethtool's legacy offload flag (``ethtool -k`` long name) -> our short name
OFFLOAD_FLAGS = {
    "tcp-segmentation-offload": "tso",
    "generic-segmentation-offload": "gso",
    "generic-receive-offload": "gro",
    "large-receive-offload": "lro",
    "scatter-gather": "sg",
    "rx-checksumming": "rx_checksum",
    "tx-checksumming": "tx_checksum",
}


@dataclass(frozen=True)
class NicInfo:
    """One NIC; every fact but the name may be None ("unknown").

    ``tx_queues``/``rx_queues`` count the queues in use (ethtool channels or
    sysfs), falling back to the ones allocated (netlink).  ``offloads`` maps
    tso/gso/gro/lro/sg/rx_checksum/tx_checksum to on/off where readable.
    """

    name: str
    mtu: int | None = None
    speed_mbit_s: int | None = None
    duplex: str | None = None  # "full" | "half"
    carrier: bool | None = None
    operstate: str | None = None  # "up", "down", "unknown" (lo), ...
    tx_queues: int | None = None
    rx_queues: int | None = None
    driver: str | None = None
    offloads: tuple[tuple[str, bool], ...] = field(default=())
    source: str = "sysfs"  # "netlink" when netlink answered
    # the CPUs its tx queues' IRQs are affine to; () none found (lo, veth), None /proc/interrupts unreadable
    tx_irq_cpus: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name, "mtu": self.mtu, "speed_mbit_s": self.speed_mbit_s, "duplex": self.duplex,
            "carrier": self.carrier, "operstate": self.operstate, "tx_queues": self.tx_queues,
            "rx_queues": self.rx_queues, "driver": self.driver, "offloads": dict(self.offloads),
            "source": self.source,
            "tx_irq_cpus": list(self.tx_irq_cpus) if self.tx_irq_cpus is not None else None,
        }  # fmt: skip


# -- parsing facts -------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read(4096).strip()
    except (OSError, ValueError):  # EINVAL (speed without carrier), EOPNOTSUPP, ENOENT, EISDIR...
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def speed_or_none(speed: object) -> int | None:
    """A link speed in Mb/s, or None for what drivers say when they do not know (-1, 0, ~0)."""
    if not isinstance(speed, int) or isinstance(speed, bool):
        return None
    return speed if 0 < speed < MAX_SANE_SPEED_MBIT_S else None


def duplex_or_none(duplex: object) -> str | None:
    d = str(duplex).strip().lower() if duplex is not None else ""
    return d if d in ("full", "half") else None


def carrier_or_none(carrier: object) -> bool | None:
    if isinstance(carrier, str):
        carrier = _int(carrier)
    return bool(carrier) if carrier in (0, 1) else None


def _positive(n: object) -> int | None:
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


# -- sysfs ---------------------------------------------------------------------


def sysfs_names(root: str = SYSFS_NET) -> list[str]:
    try:
        return sorted(os.listdir(root))
    except OSError:
        return []


def _sysfs_queues(d: str) -> tuple[int | None, int | None]:
    try:
        qs = os.listdir(os.path.join(d, "queues"))
    except OSError:
        return None, None
    tx = sum(q.startswith("tx-") for q in qs)
    rx = sum(q.startswith("rx-") for q in qs)
    return tx or None, rx or None


def _sysfs_driver(d: str) -> str | None:
    try:
        return os.path.basename(os.readlink(os.path.join(d, "device", "driver"))) or None
    except OSError:  # no device (virtual NIC) or no driver bound
        return None


def read_sysfs(name: str, root: str = SYSFS_NET) -> NicInfo:
    """``name``'s facts from sysfs alone; a missing or garbled file is an unknown."""
    d = os.path.join(root, name)
    tx, rx = _sysfs_queues(d)
    operstate = _read(os.path.join(d, "operstate"))
    return NicInfo(
        name=name, mtu=_positive(_int(_read(os.path.join(d, "mtu")))),
        speed_mbit_s=speed_or_none(_int(_read(os.path.join(d, "speed")))),
        duplex=duplex_or_none(_read(os.path.join(d, "duplex"))),
        carrier=carrier_or_none(_read(os.path.join(d, "carrier"))),
        operstate=operstate.lower() if operstate else None,
        tx_queues=tx, rx_queues=rx, driver=_sysfs_driver(d), source="sysfs",
    )  # fmt: skip


# -- ethtool and netlink (pyroute2) --------------------------------------------


@dataclass(frozen=True)
class _EthtoolFacts:
    speed_mbit_s: int | None = None
    duplex: str | None = None
    tx_queues: int | None = None
    rx_queues: int | None = None
    offloads: tuple[tuple[str, bool], ...] = ()


def _ethtool_facts(eth: Any, name: str) -> _EthtoolFacts:
    """Each query on its own: a NIC that refuses one (EOPNOTSUPP) may answer the next."""
    speed = duplex = tx = rx = None
    offloads: tuple[tuple[str, bool], ...] = ()
    try:
        mode = eth.get_link_mode(name)
        speed, duplex = speed_or_none(mode.speed), duplex_or_none(mode.duplex)
    except Exception as exc:  # pyroute2's NotSupportedError/EthtoolError/NetlinkError, OSError
        log.debug("%s: no link mode from ethtool: %s", name, exc)
    try:
        flags = eth.get_features(name).offload_flags
        offloads = tuple((short, bool(flags[k])) for k, short in OFFLOAD_FLAGS.items() if k in flags)
    except Exception as exc:
        log.debug("%s: no offload flags from ethtool: %s", name, exc)
    try:
        ch = eth.get_channels(name)
        tx = _positive((ch.combined_count or 0) + (ch.tx_count or 0))
        rx = _positive((ch.combined_count or 0) + (ch.rx_count or 0))
    except Exception as exc:
        log.debug("%s: no channels from ethtool: %s", name, exc)
    return _EthtoolFacts(speed, duplex, tx, rx, offloads)


def _open_ethtool() -> Any | None:
    try:
        from pyroute2.ethtool import Ethtool

        return Ethtool()
    except Exception as exc:  # no generic netlink, no ioctl socket: speed and offloads come from sysfs
        log.warning("ethtool unavailable (%s): speed and duplex from sysfs, offloads unknown", exc)
        return None


def _netlink_links() -> list[Any] | None:
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ip:
            return list(ip.get_links())
    except Exception as exc:  # ImportError, a sandbox without netlink...
        log.warning("netlink unavailable (%s): reading sysfs", exc)
        return None


def _merge(link: Any, fs: NicInfo, eth: _EthtoolFacts, tx_irq_cpus: tuple[int, ...] | None) -> NicInfo:
    operstate = link.get("operstate")
    return NicInfo(
        name=fs.name,
        mtu=_positive(link.get("mtu")) or fs.mtu,
        speed_mbit_s=eth.speed_mbit_s or fs.speed_mbit_s,
        duplex=eth.duplex or fs.duplex,
        carrier=carrier_or_none(link.get("carrier")) if link.get("carrier") is not None else fs.carrier,
        operstate=str(operstate).lower() if operstate else fs.operstate,
        tx_queues=eth.tx_queues or fs.tx_queues or _positive(link.get("num_tx_queues")),
        rx_queues=eth.rx_queues or fs.rx_queues or _positive(link.get("num_rx_queues")),
        driver=fs.driver,
        offloads=eth.offloads,
        source="netlink",
        tx_irq_cpus=tx_irq_cpus,
    )


def read_nics(
    names: Iterable[str] | None = None, *, sysfs_root: str = SYSFS_NET, proc: str = PROC
) -> list[NicInfo]:
    """Every NIC of this network namespace (or only ``names``), sorted by name."""
    from dataclasses import replace

    wanted = set(names) if names is not None else None
    links = _netlink_links()
    if links is None:
        return [replace(read_sysfs(n, sysfs_root), tx_irq_cpus=read_tx_irq_cpus(n, proc=proc, net=sysfs_root))
                for n in sysfs_names(sysfs_root) if wanted is None or n in wanted]  # fmt: skip
    eth = _open_ethtool()
    out = []
    try:
        for link in links:
            name = link.get("ifname")
            if not name or (wanted is not None and name not in wanted):
                continue
            facts = _ethtool_facts(eth, name) if eth is not None else _EthtoolFacts()
            irq_cpus = read_tx_irq_cpus(name, proc=proc, net=sysfs_root)
            out.append(_merge(link, read_sysfs(name, sysfs_root), facts, irq_cpus))
    finally:
        if eth is not None:
            eth.close()
    return sorted(out, key=lambda n: n.name)


# -- kernel --------------------------------------------------------------------


# sysctl name -> its file below /proc/sys
SYSCTL_FILES = {
    "net.core.rmem_max": "net/core/rmem_max",
    "net.core.wmem_max": "net/core/wmem_max",
    "net.ipv4.tcp_rmem": "net/ipv4/tcp_rmem",
    "net.ipv4.tcp_wmem": "net/ipv4/tcp_wmem",
    "net.ipv4.tcp_congestion_control": "net/ipv4/tcp_congestion_control",
    "net.ipv4.tcp_available_congestion_control": "net/ipv4/tcp_available_congestion_control",
}


def read_sysctl_texts(proc_sys: str = PROC_SYS) -> dict[str, str | None]:
    """Each of SYSCTL_FILES' sysctls -> its file's content, None when unreadable."""
    return {name: _read(os.path.join(proc_sys, rel)) for name, rel in SYSCTL_FILES.items()}


def egress_nic(host: str) -> str | None:
    """The NIC the kernel routes ``host`` through (None when that cannot be found out)."""
    try:
        import socket

        from pyroute2 import IPRoute

        addr = socket.getaddrinfo(host, None)[0][4][0]
        with IPRoute() as ip:
            routes = ip.route("get", dst=addr)
            oif = routes[0].get("oif") if routes else None
            links = ip.get_links(oif) if oif else []
            return links[0].get("ifname") if links else None
    except Exception:  # an unresolvable host, no route, no netlink: no profile, the defaults apply
        return None


def ingress_nic(host: str) -> tuple[str | None, str]:
    """The NIC that streams to a daemon listening on ``host`` arrive on, and how it was found: the
    NIC holding the address, or for a wildcard (``0.0.0.0``, ``::``) the default route's NIC.
    (None, why) where that cannot be found out."""
    try:
        import ipaddress

        from pyroute2 import IPRoute

        addr = ipaddress.ip_address(host or "0.0.0.0")
        fam = 10 if addr.version == 6 else 2  # AF_INET6 / AF_INET
        with IPRoute() as ip:
            if addr.is_unspecified:
                routes = [r for r in ip.get_routes(family=fam) if r.get("dst_len") == 0 and r.get("oif")]
                if not routes:
                    return None, f"listening on {host}, and no default route names a NIC"
                oif, how = routes[0].get("oif"), f"the default route's NIC (listening on {host})"
            else:
                held = ip.get_addr(family=fam, address=str(addr))
                if not held:
                    return None, f"no NIC holds the listen address {host}"
                oif, how = held[0]["index"], f"the NIC holding the listen address {host}"
            links = ip.get_links(oif)
            name = links[0].get("ifname") if links else None
            return (name, how) if name else (None, f"interface {oif} has no name")
    except Exception as exc:  # a name instead of an address, no netlink: unknown, nothing is pinned
        return None, f"the NIC behind {host} could not be found ({exc})"
