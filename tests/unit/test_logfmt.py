"""dwcp.ops.logfmt: text, JSON and logfmt lines, one per message, journald-aware."""

from __future__ import annotations

import json
import logging
import os

import pytest

from dwcp.ops.logfmt import LineFormatter, _journald


def _record(msg: str, level: int = logging.WARNING, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            import sys

            info = sys.exc_info()
    r = logging.LogRecord("dwcp.daemon", level, __file__, 1, msg, None, info)
    r.created, r.msecs = 1733400000.25, 250.0
    return r


def test_text_json_and_logfmt_lines():
    r = _record('peer "b" is\nunreachable')
    assert (
        LineFormatter("text").format(r)
        == '2024-12-05T12:00:00.250Z WARNING dwcp.daemon: peer "b" is\\nunreachable'
    )
    doc = json.loads(LineFormatter("json").format(r))
    assert doc == {"ts": "2024-12-05T12:00:00.250Z", "level": "warning", "logger": "dwcp.daemon",
                   "msg": 'peer "b" is\nunreachable'}  # fmt: skip
    assert LineFormatter("logfmt").format(r) == (
        'ts=2024-12-05T12:00:00.250Z level=warning logger=dwcp.daemon msg="peer \\"b\\" is\\nunreachable"'
    )
    assert LineFormatter("logfmt").format(_record("ok")).endswith("msg=ok")
    with pytest.raises(ValueError, match="log format 'xml'"):
        LineFormatter("xml")


@pytest.mark.parametrize("fmt", ["text", "json", "logfmt"])
def test_a_traceback_is_one_line_and_journald_gets_priorities_without_timestamps(fmt):
    line = LineFormatter(fmt).format(_record("failed", logging.ERROR, exc=True))
    assert "\n" not in line and "ValueError" in line
    j = LineFormatter(fmt, journald=True).format(_record("failed", logging.ERROR, exc=True))
    assert j.startswith("<3>") and "2024-12-05" not in j and "\n" not in j
    assert LineFormatter(fmt, journald=True).format(_record("x", logging.DEBUG)).startswith("<7>")
    assert LineFormatter(fmt, journald=True).format(_record("x", logging.INFO)).startswith("<6>")


def test_journald_is_told_by_journal_stream(monkeypatch, tmp_path):
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert _journald()
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # another stream: stderr is not the journal
    assert not _journald()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not _journald()
