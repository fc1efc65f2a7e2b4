"""The daemon's log lines: text, JSON or logfmt, one line per message, journald-aware.

``[logging] format``:

* ``text``: ``2026-12-05 14:00:00,123 INFO dwcp.daemon: message``;
* ``json``: one object per line, ``{"ts", "level", "logger", "msg"}`` (and ``exc`` with a traceback);
* ``logfmt``: ``ts=... level=info logger=dwcp.daemon msg="message"``, as Prometheus and Loki tools read.

Under journald (``JOURNAL_STREAM`` set, as systemd sets it for a service whose stderr goes to the
journal) a line starts with its syslog priority (``<3>`` error ... ``<7>`` debug), which journald
strips and stores, and carries no timestamp of its own: journald stamps every line.  A message or a
traceback spanning several lines is one line: its newlines are escaped (``\\n``), so every entry in
the journal or a file is whole.
"""

from __future__ import annotations

import json
import logging
import os
import time

__all__ = ["FORMATS", "LineFormatter", "configure"]

FORMATS = ("text", "json", "logfmt")
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def _journald() -> bool:
    """Whether stderr is the journal: JOURNAL_STREAM names its device:inode (systemd.exec(5))."""
    js = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _logfmt_value(v: str) -> str:
    if v and all(c.isalnum() or c in "-._/:@" for c in v):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


class LineFormatter(logging.Formatter):
    def __init__(self, fmt: str = "text", *, journald: bool = False) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
        self.fmt, self.journald = fmt, journald

    def _ts(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        exc = self.formatException(record.exc_info) if record.exc_info else ""
        level = record.levelname.lower()
        if self.fmt == "json":
            doc = {"level": level, "logger": record.name, "msg": msg}
            if not self.journald:
                doc = {"ts": self._ts(record), **doc}
            if exc:
                doc["exc"] = exc
            line = json.dumps(doc, ensure_ascii=False)
        elif self.fmt == "logfmt":
            parts = [] if self.journald else [f"ts={self._ts(record)}"]
            parts += [f"level={level}", f"logger={record.name}", f"msg={_logfmt_value(msg)}"]
            if exc:
                parts.append(f"exc={_logfmt_value(exc)}")
            line = " ".join(parts)
        else:
            text = f"{record.levelname} {record.name}: {msg}" + (f"\n{exc}" if exc else "")
            line = text if self.journald else f"{self._ts(record)} {text}"
        line = line.replace("\r", "\\r").replace("\n", "\\n")  # one message, one line
        if self.journald:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def configure(level: int, fmt: str) -> None:
    """The process's logging: ``level`` and one stderr handler with a ``LineFormatter`` of ``fmt``."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(LineFormatter(fmt, journald=_journald()))
    root.handlers[:] = [handler]
    root.setLevel(level)
