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

import logging
import os
from dataclasses import dataclass
from typing import Any

import dwcp
from dwcp.errors import ConfigError

log = logging.getLogger("dwcp.engine")

ENGINES = ("auto", "uring", "epoll", "threads")


@dataclass
class Engine:
    """The engine a daemon runs: its kind, why, and the pump (None for ``threads``)."""

    kind: str
    reason: str
    pump: Any = None

    def info(self) -> dict:
        out = {"kind": self.kind, "reason": self.reason, "backend": dwcp.backend}
        if self.pump is not None:
            out.update({k: v for k, v in self.pump.info().items() if k != "kind"})
        return out

    def close(self) -> None:
        if self.pump is not None:
            self.pump.close()


def start_engine(setting: str, slots: int, *, register: bool = True) -> Engine:
    """Start the engine ``setting`` names; ConfigError when an explicit kind cannot run here.
    ``register``: io_uring slots as registered buffers (the receiver's WRITE_FIXED; a sender, which
    only seals into its slots, leaves them unpinned)."""
    from dwcp._backend import impl

    if setting not in ENGINES:
        raise ConfigError(f"transport.engine {setting!r}: expected one of {', '.join(ENGINES)}")
    if setting == "threads":
        return Engine("threads", "transport.engine = threads: each stream's thread receives its own payloads")
    twin = " (the pure-Python twin: DWCP_IMPL=ref)" if dwcp.backend == "ref" else ""
    why = "transport.engine = epoll"
    if setting == "auto" and not impl.uring_available():
        why = "io_uring unavailable" + (" (the reference backend emulates it)" if twin else "")
    elif setting in ("uring", "auto"):
        try:
            pump = impl.Pump("uring", slots, register=register)
        except OSError as exc:
            if setting == "uring":
                raise ConfigError(
                    f"transport.engine = uring: io_uring cannot run here ({exc.strerror or exc}); "
                    "hint: set engine = auto (or epoll), and see `dwcp doctor`"
                ) from exc
            why = f"io_uring unavailable ({exc.strerror or exc})"
        else:
            info = pump.info()
            how = "registered slots"
            if twin:
                how = "an emulated ring"
            elif not register:
                how = "its slots unregistered (nothing is written from them)"
            elif not info.get("registered"):
                how = f"unregistered slots (registering them: {os.strerror(info['register_errno'] or 0)})"
            return Engine("uring", f"{setting}: io_uring, {how}{twin}", pump)
    return Engine("epoll", f"{why}: epoll + recv + pwrite{twin}", impl.Pump("epoll", slots))
