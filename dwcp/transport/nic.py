"""What each NIC can do, and the stream profile that follows (``dwcp tune``).

Facts come from netlink (pyroute2: links, MTU, queue counts, carrier) and
ethtool over netlink (pyroute2.ethtool: speed, duplex, offloads, channels),
with sysfs as the fallback for each (/sys/class/net/IF/...).  Virtual NICs
(lo, veth, bridges, TUN) answer EOPNOTSUPP or -1 to much of this: those
facts are None ("unknown"), never an error.

``profile`` is pure: from a NIC's speed and queues, an RTT and the kernel's
socket-buffer limits, the bandwidth-delay product, a per-stream window, the
stream counts (min/initial/max) and socket buffer size for the transport,
and warnings with the exact sysctl line to fix what limits it.  ``--apply``
writes the profiles to ``<state_dir>/tune.json`` (atomically), where the
transport reads them (``load_profile``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field

__all__ = ["NicInfo", "read_nics", "profile", "apply_profiles", "load_profile", "kernel_sysctls", "TUNE_FILE"]

log = logging.getLogger("dwcp.tune")
TUNE_FILE = "tune.json"
OFFLOADS = ("tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload",
            "large-receive-offload", "tx-scatter-gather", "rx-checksum", "tx-checksum-ip-generic")  # fmt: skip
MiB = 1 << 20


@dataclass(frozen=True)
class NicInfo:
    name: str
    mtu: int | None = None
    speed_mbit_s: int | None = None  # None: unknown (virtual NICs, no carrier)
    duplex: str | None = None
    carrier: bool | None = None
    operstate: str | None = None
    tx_queues: int | None = None
    rx_queues: int | None = None
    driver: str | None = None
    offloads: dict[str, bool] = field(default_factory=dict)
    source: str = "netlink"  # or "sysfs" when netlink was not available

    def to_dict(self) -> dict:
        return asdict(self)


# -- sysfs ---------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:  # EINVAL from `speed` on a NIC without carrier, EOPNOTSUPP, ENOENT...
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_sysfs(name: str, root: str = "/sys/class/net") -> NicInfo:
    d = os.path.join(root, name)
    speed = _int(_read(os.path.join(d, "speed")))
    carrier = _int(_read(os.path.join(d, "carrier")))
    queues = os.path.join(d, "queues")
    try:
        qs = os.listdir(queues)
    except OSError:
        qs = []
    drv = os.path.realpath(os.path.join(d, "device", "driver")) if os.path.exists(os.path.join(d, "device", "driver")) else None
    return NicInfo(
        name=name, mtu=_int(_read(os.path.join(d, "mtu"))), speed_mbit_s=speed if speed and speed > 0 else None,
        duplex=_read(os.path.join(d, "duplex")), carrier=None if carrier is None else bool(carrier),
        operstate=_read(os.path.join(d, "operstate")),
        tx_queues=sum(q.startswith("tx-") for q in qs) or None, rx_queues=sum(q.startswith("rx-") for q in qs) or None,
        driver=os.path.basename(drv) if drv else None, source="sysfs",
    )  # fmt: skip


def _sysfs_names(root: str = "/sys/class/net") -> list[str]:
    try:
        return sorted(os.listdir(root))
    except OSError:
        return []


# -- netlink -------------------------------------------------------------------


def read_nics(names: list[str] | None = None, *, sysfs_root: str = "/sys/class/net") -> list[NicInfo]:
    """Every NIC of this network namespace (or ``names``), netlink first, sysfs where it is missing."""
    try:
        from pyroute2 import IPRoute
        from pyroute2.ethtool import Ethtool
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        return [read_sysfs(n, sysfs_root) for n in (names or _sysfs_names(sysfs_root))]
    out = []
    try:
        with IPRoute() as ip:
            links = ip.get_links()
    except OSError as exc:
        log.warning("netlink unavailable (%s): reading sysfs", exc)
        return [read_sysfs(n, sysfs_root) for n in (names or _sysfs_names(sysfs_root))]
    eth = Ethtool()
    try:
        for link in links:
            name = link.get("ifname")
            if names and name not in names:
                continue
            fs = read_sysfs(name, sysfs_root)
            speed = duplex = None
            offloads: dict[str, bool] = {}
            tx_q, rx_q = link.get("num_tx_queues"), link.get("num_rx_queues")
            try:
                mode = eth.get_link_mode(name)
                speed = mode.speed if mode.speed and mode.speed > 0 else None
                duplex = None if mode.duplex in (None, "Unknown") else str(mode.duplex).lower()
            except Exception:  # NotSupportedError (EOPNOTSUPP) on virtual NICs, and the like
                pass
            try:
                feats = eth.get_features(name).features
                offloads = {k: bool(feats[k].enable) for k in OFFLOADS if k in feats}
            except Exception:
                pass
            try:
                ch = eth.get_channels(name)
                if ch.combined_count or ch.tx_count or ch.rx_count:
                    tx_q = (ch.combined_count or 0) + (ch.tx_count or 0)
                    rx_q = (ch.combined_count or 0) + (ch.rx_count or 0)
            except Exception:
                pass
            carrier = link.get("carrier")
            out.append(NicInfo(
                name=name, mtu=link.get("mtu"), speed_mbit_s=speed or fs.speed_mbit_s, duplex=duplex or fs.duplex,
                carrier=None if carrier is None else bool(carrier), operstate=link.get("operstate") or fs.operstate,
                tx_queues=tx_q or fs.tx_queues, rx_queues=rx_q or fs.rx_queues, driver=fs.driver, offloads=offloads,
            ))  # fmt: skip
    finally:
        eth.close()
    return sorted(out, key=lambda n: n.name)


# -- kernel limits and the profile ---------------------------------------------


def kernel_sysctls(proc_sys: str = "/proc/sys") -> dict:
    """Socket-buffer limits and congestion controls (None where unreadable)."""

    def ints(rel: str) -> list[int] | None:
        t = _read(os.path.join(proc_sys, rel))
        try:
            return [int(x) for x in t.split()] if t else None
        except ValueError:
            return None

    def one(rel: str) -> int | None:
        v = ints(rel)
        return v[0] if v else None

    avail = _read(os.path.join(proc_sys, "net/ipv4/tcp_available_congestion_control"))
    return {
        "rmem_max": one("net/core/rmem_max"), "wmem_max": one("net/core/wmem_max"),
        "tcp_rmem": ints("net/ipv4/tcp_rmem"), "tcp_wmem": ints("net/ipv4/tcp_wmem"),
        "congestion_control": _read(os.path.join(proc_sys, "net/ipv4/tcp_congestion_control")),
        "available_congestion_control": avail.split() if avail else [],
    }  # fmt: skip


def profile(nic: NicInfo, *, rtt_ms: float, sysctls: dict, max_streams_cap: int = 64) -> dict:
    """The stream profile for ``nic`` at ``rtt_ms``; ``warnings`` name the sysctl lines that would help."""
    if rtt_ms <= 0:
        raise ValueError("rtt_ms must be positive")
    warnings: list[str] = []
    rate = nic.speed_mbit_s * 1e6 / 8 if nic.speed_mbit_s else None  # bytes/s
    bdp = int(rate * rtt_ms / 1000) if rate else None
    tcp_rmem = (sysctls.get("tcp_rmem") or [0, 0, 0])[-1]
    tcp_wmem = (sysctls.get("tcp_wmem") or [0, 0, 0])[-1]
    # one stream's window: what autotuning may grow a socket to (tcp_[rw]mem max; about
    # half of it is window, the rest bookkeeping), and no more than the path holds
    auto = min(tcp_rmem, tcp_wmem) // 2 if tcp_rmem and tcp_wmem else 4 * MiB
    per_stream = max(64 * 1024, min(auto, bdp) if bdp else auto)
    queues = nic.tx_queues or 1
    if bdp:
        initial = max(1, math.ceil(bdp / per_stream))
        max_streams = min(max_streams_cap, max(initial * 2, queues * 2, 4))
        initial = min(initial, max_streams)
        why = f"BDP {bdp / MiB:.2f} MiB = {nic.speed_mbit_s} Mbit/s x {rtt_ms:g} ms over {per_stream / MiB:.2f} MiB windows"
        if 2 * bdp > tcp_rmem:
            warnings.append(f"net.ipv4.tcp_rmem max {tcp_rmem} is below 2 x BDP ({2 * bdp}): "
                            f"sysctl -w net.ipv4.tcp_rmem='4096 131072 {2 * bdp}'")  # fmt: skip
        if 2 * bdp > tcp_wmem:
            warnings.append(f"net.ipv4.tcp_wmem max {tcp_wmem} is below 2 x BDP ({2 * bdp}): "
                            f"sysctl -w net.ipv4.tcp_wmem='4096 16384 {2 * bdp}'")  # fmt: skip
        if (sysctls.get("rmem_max") or 0) < 2 * bdp:
            warnings.append(f"net.core.rmem_max {sysctls.get('rmem_max')} is below 2 x BDP: an explicit "
                            f"socket_buffer_bytes is capped there; sysctl -w net.core.rmem_max={2 * bdp}")  # fmt: skip
    else:
        initial, max_streams = 4, min(max_streams_cap, max(16, queues * 2))
        why = "link speed unknown (virtual NIC or no carrier): start at 4 streams and let the controller probe"
    if "bbr" not in (sysctls.get("available_congestion_control") or []):
        warnings.append("bbr is not available: modprobe tcp_bbr (dwcp asks for it per socket)")
    chunk = 4 * MiB if not bdp or bdp < 64 * MiB else 16 * MiB
    return {
        "nic": nic.name, "speed_mbit_s": nic.speed_mbit_s, "mtu": nic.mtu, "tx_queues": nic.tx_queues,
        "rtt_ms": rtt_ms, "bdp_bytes": bdp, "per_stream_window_bytes": per_stream,
        "link_bytes_per_s": rate, "min_streams": 1, "initial_streams": initial, "max_streams": max_streams,
        "socket_buffer_bytes": 0 if not bdp or 2 * bdp <= min(tcp_rmem, tcp_wmem) else 2 * bdp,
        "chunk_size_bytes": chunk, "why": why, "warnings": warnings,
    }  # fmt: skip


def apply_profiles(state_dir: str, profiles: list[dict]) -> str:
    """Write the profiles to <state_dir>/tune.json atomically (tmp, fsync, rename); returns the path."""
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, TUNE_FILE)
    tmp = path + f".tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "profiles": profiles}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def egress_nic(host: str) -> str | None:
    """The NIC the kernel routes ``host`` through (None when unknown)."""
    try:
        import socket

        from pyroute2 import IPRoute

        addr = socket.getaddrinfo(host, None)[0][4][0]
        with IPRoute() as ip:
            routes = ip.route("get", dst=addr)
            if not routes:
                return None
            links = ip.get_links(routes[0].get("oif"))
            return links[0].get("ifname") if links else None
    except Exception:  # no netlink, an unresolvable host...: no profile, the defaults apply
        return None


def load_profile(state_dir: str, nic: str | None = None) -> dict | None:
    """The applied profile for ``nic`` (or the first one), None when there is none or it is unreadable."""
    path = os.path.join(state_dir, TUNE_FILE)
    try:
        with open(path) as f:
            doc = json.load(f)
        profiles = doc["profiles"]
        if not isinstance(profiles, list):
            raise ValueError("profiles is not a list")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    for p in profiles:
        if isinstance(p, dict) and (nic is None or p.get("nic") == nic):
            return p
    return None
