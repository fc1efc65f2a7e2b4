"""What a send takes from its egress NIC's ``dwcp tune`` profile, and why it leaves the rest.

Theory of operation
-------------------
``dwcp tune --apply`` writes one profile per NIC to ``<state dir>/tune.json``
(``dwcp.tune.store``).  Before its HELLO a send looks up the profile of the
NIC the kernel routes its peer through and ``plan_nic`` decides, field by
field, what the send uses; the sender then applies the plan:

====================  ==================================================  ==========================
profile field         what the send does with it                          who applies it
====================  ==================================================  ==========================
max_streams           the controller's ceiling (2 x tx queues, or what    ``StreamController``
                      filling the BDP takes)
initial_streams       the first stream count                              the sender
socket_buffer_bytes   SO_SNDBUF/SO_RCVBUF of every stream (the kernel     ``Dialer.dial``
                      caps them at net.core.wmem_max/rmem_max)
chunk_size_bytes      the chunk size (about 100 ms of link time)          the sender, before HELLO
link_bytes_per_s      the BDP (first stream count, buffers), the encoder  the sender
tx_irq_cpus           CPU affinity of every stream thread and of the      the stream thread itself;
                      send's engine pump (its loop thread)                the sender, for the pump
====================  ==================================================  ==========================

The plan's ``to_json`` is the send report's ``nic`` object:
``{"nic": name, "applied": {field: value}, "skipped": {field: why}}``.

Rules
-----
1. An explicit setting wins.  The config (and the CLI flags, which the CLI
   turns into config) sets a field when it holds other than its unset value:
   0 for ``initial_streams``, ``socket_buffer_bytes`` and
   ``link_bytes_per_s``; for ``max_streams`` and ``chunk_size_bytes``, which
   have no unset value, anything but the default (so a config that writes the
   default, ``max_streams = 16``, leaves the field to the profile).  A caller's
   fixed stream count (``--streams N``) wins over both stream fields.
2. A measurement wins over the profile: the chunk size (with
   ``adaptive_chunks``) and the first stream count come from the forecast of
   the path when it has a recent send (``dwcp.transport.trace``);
   where the link rate is known (config, loopback, the profile's), the first
   count comes from it at the control stream's measured RTT, not from the
   profile's count (the BDP at the RTT ``dwcp tune`` assumed); and a profile
   buffer below 2 x that BDP is not set on the data streams (``for_path``).
3. A field the profile lacks (a tune.json written before it existed) or holds
   out of range is not applied, and ``skipped`` says so.
4. Affinity only where it can help: the NIC has more than one tx queue, the
   profile names the CPUs of its tx-queue IRQs, and some of those CPUs are
   ones this process may run on.  On a single-queue NIC one IRQ serves every
   stream wherever the threads run, so nothing is pinned.
5. Pure: the profile, the config and the facts (loopback, allowed CPUs,
   measured path) come in; no file, socket or clock is read here.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dwcp.config import TransportConfig

__all__ = ["NicPlan", "plan_nic", "LOOPBACK_LINK_BYTES_PER_S"]

LOOPBACK_LINK_BYTES_PER_S = 1e11  # what a loopback peer's link is taken as (the sender's guess)
_DEFAULTS = {f.name: f.default for f in fields(TransportConfig)}
_OLDER = "not in the profile (a tune.json from an older dwcp: run `dwcp tune --apply` again)"


@dataclass(frozen=True)
class NicPlan:
    """What one send takes from ``nic``'s profile; a None value leaves the config's in force."""

    nic: str
    max_streams: int | None = None
    initial_streams: int | None = None
    socket_buffer_bytes: int | None = None
    chunk_size_bytes: int | None = None
    link_bytes_per_s: float | None = None
    cpus: tuple[int, ...] | None = None  # pin every stream thread to these
    applied: dict[str, Any] = field(default_factory=dict)  # field -> the value used
    skipped: dict[str, str] = field(default_factory=dict)  # field -> why the profile's was not

    def without_affinity(self, why: str) -> NicPlan:
        """The plan after pinning failed on every thread (``why``: the first error)."""
        applied = {k: v for k, v in self.applied.items() if k != "cpu_affinity"}
        return replace(self, cpus=None, applied=applied, skipped={**self.skipped, "cpu_affinity": why})

    def for_path(self, rtt_s: float, link_bytes_per_s: float | None) -> NicPlan:
        """The plan once the path's RTT is measured: a profile buffer below 2 x the BDP (``link`` x
        ``rtt_s``) would cap every stream's window, since ``dwcp tune`` sized it for an RTT it assumed;
        then the streams' buffers are left to the BDP sizing (dwcp.transport.sockopts)."""
        if (
            not self.socket_buffer_bytes
            or not link_bytes_per_s
            or 2 * link_bytes_per_s * rtt_s <= self.socket_buffer_bytes
        ):
            return self
        need = int(2 * link_bytes_per_s * rtt_s)
        applied = {k: v for k, v in self.applied.items() if k != "socket_buffer_bytes"}
        why = (f"the profile's {self.socket_buffer_bytes} bytes are below 2 x the BDP at the measured RTT of "
               f"{rtt_s * 1000:.1f} ms ({need} bytes): the data streams' are sized from the BDP instead")  # fmt: skip
        return replace(self, socket_buffer_bytes=None, applied=applied,
                       skipped={**self.skipped, "socket_buffer_bytes": why})  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"nic": self.nic, "applied": dict(self.applied), "skipped": dict(self.skipped)}


def _int(profile: Mapping[str, Any], name: str, lo: int, hi: int, what: str) -> tuple[int | None, str | None]:
    """(the profile's ``name`` if it is an int in [lo, hi], else None; why not)."""
    if name not in profile:
        return None, _OLDER
    v = profile[name]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        return None, f"the profile's {v!r} is not {what}"
    return v, None


def _cpus(v: object) -> tuple[int, ...] | None:
    if not isinstance(v, list | tuple) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                  for c in v):  # fmt: skip
        return None
    return tuple(sorted(set(v)))


def plan_nic(
    profile: Mapping[str, Any],
    tp: TransportConfig,
    *,
    fixed_streams: int | None = None,
    measured_chunk: str | None = None,
    measured_streams: str | None = None,
    loopback: bool = False,
    allowed_cpus: Collection[int] | None = None,
) -> NicPlan:
    """The plan for a send whose egress NIC has ``profile`` (a tune.json entry), per the module rules.

    ``fixed_streams``: the caller's stream count (None: auto).  ``measured_chunk`` /
    ``measured_streams``: why the chunk size / first stream count come from a measured path
    (None: no recent measurement).  ``loopback``: the peer is on this host.  ``allowed_cpus``:
    the CPUs this process may run on (None: unknown, every CPU is taken as allowed).
    """
    nic = str(profile.get("nic"))
    applied: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    fixed = f"fixed at {fixed_streams} streams by the caller (--streams {fixed_streams})"

    max_streams = None
    if fixed_streams is not None:
        skipped["max_streams"] = fixed
    elif tp.max_streams != _DEFAULTS["max_streams"]:
        skipped["max_streams"] = f"transport.max_streams = {tp.max_streams} in the config wins"
    else:
        v, why = _int(profile, "max_streams", 1, 256, "a stream count in [1, 256]")
        if v is None:
            skipped["max_streams"] = str(why)
        else:
            max_streams = applied["max_streams"] = max(v, tp.min_streams)  # min_streams is the config's
    ceiling = max_streams or tp.max_streams

    link = None
    if tp.link_bytes_per_s:
        skipped["link_bytes_per_s"] = (
            f"transport.link_bytes_per_s = {tp.link_bytes_per_s:g} in the config wins"
        )
    elif loopback:
        skipped["link_bytes_per_s"] = (f"the peer is on loopback: its link is taken as "
                                       f"{LOOPBACK_LINK_BYTES_PER_S * 8 / 1e9:g} Gbit/s")  # fmt: skip
    elif "link_bytes_per_s" not in profile:
        skipped["link_bytes_per_s"] = _OLDER
    else:
        rate = profile["link_bytes_per_s"]
        if rate is None or rate == 0:
            skipped["link_bytes_per_s"] = "the profile's link speed is unknown (virtual NIC or no carrier)"
        elif (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not (rate > 0 and math.isfinite(rate))
        ):
            skipped["link_bytes_per_s"] = f"the profile's {rate!r} is not a positive rate"
        else:
            link = applied["link_bytes_per_s"] = float(rate)

    initial = None
    if fixed_streams is not None:
        skipped["initial_streams"] = fixed
    elif tp.initial_streams:
        skipped["initial_streams"] = f"transport.initial_streams = {tp.initial_streams} in the config wins"
    elif measured_streams is not None:
        skipped["initial_streams"] = measured_streams
    elif tp.link_bytes_per_s or loopback or link:
        # the profile's count is its BDP at the RTT `dwcp tune` assumed; the sender measures the RTT
        skipped["initial_streams"] = ("from the link rate at the control stream's measured RTT (the profile's "
                                      f"count assumed an RTT of {profile.get('rtt_s')!r} s)")  # fmt: skip
    else:
        v, why = _int(profile, "initial_streams", 1, 256, "a stream count in [1, 256]")
        if v is None:
            skipped["initial_streams"] = str(why)
        else:
            initial = applied["initial_streams"] = min(ceiling, max(tp.min_streams, v))

    buf = None
    if tp.socket_buffer_bytes:
        skipped["socket_buffer_bytes"] = (
            f"transport.socket_buffer_bytes = {tp.socket_buffer_bytes} in the config wins"
        )
    else:
        v, why = _int(profile, "socket_buffer_bytes", 0, 1 << 30, "a byte count in [0, 1 GiB]")
        if v is None:
            skipped["socket_buffer_bytes"] = str(why)
        elif v == 0:
            skipped["socket_buffer_bytes"] = (
                "the profile leaves the buffers to the kernel (0: link speed unknown)"
            )
        else:
            buf = applied["socket_buffer_bytes"] = v

    chunk = None
    if not tp.adaptive_chunks:
        skipped["chunk_size_bytes"] = (f"transport.adaptive_chunks = false (the config, or --chunk-size): "
                                       f"fixed at {tp.chunk_size_bytes} bytes")  # fmt: skip
    elif tp.chunk_size_bytes != _DEFAULTS["chunk_size_bytes"]:
        skipped["chunk_size_bytes"] = f"transport.chunk_size_bytes = {tp.chunk_size_bytes} in the config wins"
    elif measured_chunk is not None:
        skipped["chunk_size_bytes"] = measured_chunk
    else:
        v, why = _int(profile, "chunk_size_bytes", 4096, 64 << 20, "a chunk size in [4 KiB, 64 MiB]")
        if v is not None and v % 4096:
            v, why = None, f"the profile's {v} is not a multiple of 4096"
        if v is None:
            skipped["chunk_size_bytes"] = str(why)
        else:
            chunk = applied["chunk_size_bytes"] = v

    cpus = None
    tx = profile.get("tx_queues")
    if "tx_irq_cpus" not in profile:
        skipped["cpu_affinity"] = "tx_irq_cpus " + _OLDER
    elif not isinstance(tx, int) or isinstance(tx, bool) or tx < 1:
        skipped["cpu_affinity"] = f"the number of {nic}'s tx queues is unknown: nothing pinned"
    elif tx == 1:
        skipped["cpu_affinity"] = (f"{nic} has a single tx queue: its one IRQ serves every stream wherever "
                                   "the threads run, so nothing is pinned")  # fmt: skip
    elif profile["tx_irq_cpus"] is None:
        skipped["cpu_affinity"] = (
            "the CPUs of its tx-queue IRQs were unknown to `dwcp tune` (/proc/interrupts)"
        )
    elif (irq_cpus := _cpus(profile["tx_irq_cpus"])) is None:
        skipped["cpu_affinity"] = (
            f"the profile's tx_irq_cpus {profile['tx_irq_cpus']!r} is not a list of CPUs"
        )
    elif not irq_cpus:
        skipped["cpu_affinity"] = f"no tx-queue IRQ of {nic} found in /proc/interrupts: nothing pinned"
    else:
        ok = irq_cpus if allowed_cpus is None else tuple(c for c in irq_cpus if c in set(allowed_cpus))
        if not ok:
            skipped["cpu_affinity"] = (f"the tx-queue IRQs' CPUs {list(irq_cpus)} are none of the CPUs this "
                                       f"process may run on {sorted(allowed_cpus or ())}")  # fmt: skip
        else:
            cpus = ok
            applied["cpu_affinity"] = list(ok)
    return NicPlan(nic=nic, max_streams=max_streams, initial_streams=initial, socket_buffer_bytes=buf,
                   chunk_size_bytes=chunk, link_bytes_per_s=link, cpus=cpus, applied=applied, skipped=skipped)  # fmt: skip
