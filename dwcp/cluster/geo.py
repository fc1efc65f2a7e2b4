"""Distances between nodes: haversine over configured coordinates, and an
IP-prefix -> location table for addresses whose node we do not know.

No guessing: an address that matches no configured prefix has no location
(None), and the geo policy ranks it after every located peer.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass

from dwcp.errors import ConfigError

__all__ = ["Location", "haversine_km", "PrefixTable"]

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius


@dataclass(frozen=True)
class Location:
    latitude_deg: float
    longitude_deg: float
    region: str = ""

    def __post_init__(self) -> None:
        if not (-90 <= self.latitude_deg <= 90 and -180 <= self.longitude_deg <= 180):
            raise ConfigError(f"coordinates ({self.latitude_deg}, {self.longitude_deg}) out of range")


def haversine_km(a: Location, b: Location) -> float:
    """Great-circle distance in km."""
    p1, p2 = math.radians(a.latitude_deg), math.radians(b.latitude_deg)
    dp = p2 - p1
    dl = math.radians(b.longitude_deg - a.longitude_deg)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class PrefixTable:
    """Longest-prefix match of an IP address to a configured Location."""

    def __init__(self, entries: Iterable[tuple[str, Location]] = ()) -> None:
        self._by_len: dict[tuple[int, int], dict[int, Location]] = {}
        for cidr, loc in entries:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ConfigError(f"prefix {cidr!r}: {exc}") from None
            self._by_len.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = loc
        self._order = sorted(self._by_len, key=lambda vl: -vl[1])

    def lookup(self, address: str) -> Location | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        bits = 32 if ip.version == 4 else 128
        x = int(ip)
        for version, plen in self._order:
            if version != ip.version:
                continue
            mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
            loc = self._by_len[(version, plen)].get(x & mask)
            if loc is not None:
                return loc
        return None
