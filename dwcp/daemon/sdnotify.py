"""systemd notification protocol (sd_notify) in pure Python; a no-op without $NOTIFY_SOCKET.

The protocol (sd_notify(3)): newline-separated ``KEY=VALUE`` fields in one
datagram sent to the AF_UNIX SOCK_DGRAM socket named by ``$NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace).  The daemon tells systemd
READY=1 once it serves, STATUS=<one line> whenever it likes, WATCHDOG=1 at
half of ``$WATCHDOG_USEC``, RELOADING=1 + MONOTONIC_USEC=<CLOCK_MONOTONIC µs>
when a reload starts (systemd >= 253 requires the timestamp for
Type=notify-reload) and READY=1 when it is done, STOPPING=1 on shutdown, and
EXTEND_TIMEOUT_USEC=<µs> to ask for more time while starting or stopping.

:class:`Notifier` reads the environment once, keeps one socket open for all
its messages, and never raises on a socket that is missing or refuses (the
first failure is logged at warning, later ones at debug until a send works
again).  ``notify()`` is the one-shot form.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Mapping

__all__ = ["notify", "Notifier", "STATUS_MAX_CHARS"]

log = logging.getLogger(__name__)

STATUS_MAX_CHARS = 256  # what `systemctl status` shows on one line; longer text is cut with "..."
SEND_TIMEOUT_S = 1.0  # a wedged manager must not stall the caller (the watchdog then fires anyway)


def _address(value: str) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET``, or None when it is unset or not a form we speak."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    if value:
        log.warning(
            "NOTIFY_SOCKET=%r is neither an absolute path nor @abstract: not notifying systemd", value
        )
    return None


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1`` ... to systemd in one datagram.

    Returns False (and does nothing) when not run under a notify-type unit, or
    when the send failed (logged; never raised).
    """
    addr = _address((env if env is not None else os.environ).get("NOTIFY_SOCKET", ""))
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(SEND_TIMEOUT_S)
            s.sendto("\n".join(fields).encode(), addr)
    except OSError as exc:
        log.warning("sd_notify to %r failed: %s", addr, exc)
        return False
    return True


def _one_line(text: str) -> str:
    line = re.sub(r"[\r\n\0]+", " ", text).strip()
    if len(line) > STATUS_MAX_CHARS:
        line = line[: STATUS_MAX_CHARS - 3] + "..."
    return line


class Notifier:
    """sd_notify over one kept-open socket; every method returns whether a datagram went out.

    ``env`` defaults to ``os.environ`` and ``pid`` to ``os.getpid()`` (tests
    pass their own).  The watchdog is honoured only when ``$WATCHDOG_USEC`` is
    a positive integer and ``$WATCHDOG_PID`` is absent or this process's pid.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_usec: int | None = None
        wd, wd_pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        me = os.getpid() if pid is None else pid
        try:
            usec = int(wd) if wd else 0
            owner = int(wd_pid) if wd_pid else me
        except ValueError:
            log.warning("WATCHDOG_USEC=%r / WATCHDOG_PID=%r unreadable: no watchdog", wd, wd_pid)
            usec, owner = 0, me
        if usec > 0 and owner == me:
            self.watchdog_usec = usec
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False
        self.sent = 0  # datagrams sent, for status and tests
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call ``watchdog()``: half of $WATCHDOG_USEC, or None without a watchdog."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=VALUE`` fields; False without $NOTIFY_SOCKET or when the send failed."""
        if self.address is None:
            return False
        msg = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.settimeout(SEND_TIMEOUT_S)
                # unconnected: each sendto resolves the address again, so a socket systemd re-creates works
                self._sock.sendto(msg, self.address)
            except OSError as exc:
                self.failed += 1
                (log.debug if self._failing else log.warning)(
                    "sd_notify to %r failed (%s); carrying on without systemd notifications",
                    self.address,
                    exc,
                )
                self._failing = True
                return False
            self._failing = False
            self.sent += 1
            return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the daemon serves (also: a reload is done)."""
        return self.send("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        """STATUS=<text> on one line (newlines folded into spaces, at most STATUS_MAX_CHARS)."""
        return self.send(*self._status(text))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *self._status(status))

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC now unless given); send ``ready()`` when done."""
        if monotonic_usec is None:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def watchdog(self) -> bool:
        """WATCHDOG=1, only when the watchdog is ours (see the class doc)."""
        if self.watchdog_usec is None:
            return False
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for ``seconds`` more before the start/stop timeout fires."""
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"extend_timeout({seconds}): need a positive, finite number of seconds")
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1e6))}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        return () if text is None else (f"STATUS={_one_line(text)}",)
