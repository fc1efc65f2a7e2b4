"""Per-NIC tuning (``dwcp tune``): read the NICs and the kernel's limits, derive stream profiles.

- ``dwcp.tune.nic``: the readers (netlink and ethtool via pyroute2, sysfs as fallback).
- ``dwcp.tune.profile``: pure functions from those facts to a ``StreamProfile`` and warnings.
- ``dwcp.tune.store``: ``tune.json`` in the state dir, written atomically, read by the transport.
"""

from __future__ import annotations

from .nic import PROC_SYS, NicInfo, egress_nic, read_nics, read_sysctl_texts, read_sysfs
from .profile import (
    DEFAULT_RTT_S,
    StreamProfile,
    Sysctls,
    buffer_warnings,
    congestion_warnings,
    parse_sysctls,
    stream_profile,
)
from .store import DEFAULT_STATE_DIR, TUNE_FILE, apply_profiles, load_profile

__all__ = [
    "NicInfo",
    "StreamProfile",
    "Sysctls",
    "DEFAULT_RTT_S",
    "DEFAULT_STATE_DIR",
    "TUNE_FILE",
    "read_nics",
    "read_sysfs",
    "read_sysctls",
    "egress_nic",
    "parse_sysctls",
    "stream_profile",
    "buffer_warnings",
    "congestion_warnings",
    "apply_profiles",
    "load_profile",
]


def read_sysctls(proc_sys: str = PROC_SYS) -> Sysctls:
    """The kernel's buffer limits and congestion controls from ``proc_sys`` (unknowns are None)."""
    return parse_sysctls(read_sysctl_texts(proc_sys))
