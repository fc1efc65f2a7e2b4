"""systemd notification protocol (sd_notify) in pure Python; a no-op without $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket

__all__ = ["notify"]


def notify(*fields: str, env: dict[str, str] | None = None) -> bool:
    """Send ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1`` ... to systemd.

    Returns False (and does nothing) when not run under a notify-type unit.
    """
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    msg = "\n".join(fields).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(path)
        s.sendall(msg)
    return True
