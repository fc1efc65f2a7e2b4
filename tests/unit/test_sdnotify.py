"""dwcp.daemon.sdnotify against a fake systemd: a real AF_UNIX SOCK_DGRAM socket that records datagrams."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest

from dwcp.daemon.sdnotify import STATUS_MAX_CHARS, Notifier, notify


class FakeSystemd:
    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(65536).decode()

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536, socket.MSG_PEEK)
            return True
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(2.0)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    path = str(tmp_path / "notify.sock")
    fake = FakeSystemd(path)
    yield fake, path
    fake.close()


def test_each_message_exactly(systemd):
    fake, path = systemd
    with Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"}) as n:
        assert n.enabled
        assert n.ready("serving on :7700") and fake.recv() == "READY=1\nSTATUS=serving on :7700"
        assert n.ready() and fake.recv() == "READY=1"
        assert n.status("2 transfers, 1.2 GB/s") and fake.recv() == "STATUS=2 transfers, 1.2 GB/s"
        assert n.stopping() and fake.recv() == "STOPPING=1"
        assert n.stopping("draining") and fake.recv() == "STOPPING=1\nSTATUS=draining"
        assert n.watchdog() and fake.recv() == "WATCHDOG=1"
        assert n.extend_timeout(30) and fake.recv() == "EXTEND_TIMEOUT_USEC=30000000"
        assert n.extend_timeout(0.25) and fake.recv() == "EXTEND_TIMEOUT_USEC=250000"
        assert n.reloading(monotonic_usec=12345) and fake.recv() == "RELOADING=1\nMONOTONIC_USEC=12345"
        assert n.sent == 9 and n.failed == 0
        with pytest.raises(ValueError):
            n.extend_timeout(0)
        with pytest.raises(ValueError):
            n.extend_timeout(float("inf"))


def test_reloading_stamps_clock_monotonic(systemd):
    fake, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    head, stamp = fake.recv().split("\n")
    assert head == "RELOADING=1" and stamp.startswith("MONOTONIC_USEC=")
    assert before <= int(stamp.removeprefix("MONOTONIC_USEC=")) <= after
    n.close()


def test_status_is_one_bounded_line(systemd):
    fake, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.status("line one\nline two\r\n\nthree\0four\n")
    assert fake.recv() == "STATUS=line one line two three four"
    n.status("x" * 10_000)
    got = fake.recv().removeprefix("STATUS=")
    assert len(got) == STATUS_MAX_CHARS and got.endswith("...")
    # a newline in the status cannot smuggle in another field
    n.ready("ok\nSTOPPING=1")
    assert fake.recv() == "READY=1\nSTATUS=ok STOPPING=1"
    n.close()


def test_one_socket_for_every_message(systemd, monkeypatch):
    fake, path = systemd
    made = []
    real = socket.socket

    def counting(*a, **kw):
        s = real(*a, **kw)
        made.append(s)
        return s

    n = Notifier({"NOTIFY_SOCKET": path})
    monkeypatch.setattr(socket, "socket", counting)
    for i in range(5):
        assert n.status(f"tick {i}")
        assert fake.recv() == f"STATUS=tick {i}"
    assert len(made) == 1
    n.close()
    assert made[0].fileno() == -1


def test_abstract_namespace_socket():
    name = f"dwcp-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.address == "\0" + name
        assert n.ready("up") and fake.recv() == "READY=1\nSTATUS=up"
        assert notify("STATUS=one-shot", env={"NOTIFY_SOCKET": "@" + name})
        assert fake.recv() == "STATUS=one-shot"
        n.close()
    finally:
        fake.close()


def test_watchdog_interval_is_half():
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent/sock", "WATCHDOG_USEC": "20000000"})
    assert n.watchdog_usec == 20_000_000 and n.watchdog_interval_s == 10.0
    assert Notifier({"WATCHDOG_USEC": "1"}).watchdog_interval_s == 0.5e-6


@pytest.mark.parametrize("env,pid,interval", [
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "4242"}, 4242, 2.0),  # ours
    ({"WATCHDOG_USEC": "4000000"}, 4242, 2.0),                          # no WATCHDOG_PID: ours
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": ""}, 4242, 2.0),
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, 4242, None),    # some other process's
    ({"WATCHDOG_USEC": "0"}, 4242, None),
    ({"WATCHDOG_USEC": "soon"}, 4242, None),
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "me"}, 4242, None),
    ({}, 4242, None),
])  # fmt: skip
def test_watchdog_pid_rules(env, pid, interval):
    assert Notifier(env, pid=pid).watchdog_interval_s == interval


def test_watchdog_pid_mismatch_sends_nothing(systemd):
    fake, path = systemd
    other = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert other.watchdog_interval_s is None
    assert other.watchdog() is False
    assert not fake.pending()
    mine = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval_s == 0.5 and mine.watchdog() and fake.recv() == "WATCHDOG=1"
    no_wd = Notifier({"NOTIFY_SOCKET": path})
    assert no_wd.watchdog() is False and not fake.pending()
    for n in (other, mine, no_wd):
        n.close()


def test_no_op_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    n = Notifier()
    assert not n.enabled and n.address is None
    assert n.watchdog_interval_s == 1.0  # known, though there is nobody to tell
    assert [n.ready("x"), n.status("x"), n.stopping(), n.reloading(), n.watchdog(), n.extend_timeout(1)] == [
        False
    ] * 6
    assert n._sock is None and n.sent == 0 and n.failed == 0
    assert notify("READY=1") is False
    assert notify("READY=1", env={}) is False


def test_unusable_notify_socket_value_disables(caplog):
    with caplog.at_level(logging.WARNING, logger="dwcp.daemon.sdnotify"):
        n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and n.ready() is False
    assert "neither an absolute path" in caplog.text
    assert Notifier({"NOTIFY_SOCKET": "@"}).enabled is False


def test_socket_vanishing_after_start_does_not_raise(systemd, caplog):
    fake, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    assert n.ready("up") and fake.recv() == "READY=1\nSTATUS=up"
    fake.close()
    os.unlink(path)
    with caplog.at_level(logging.DEBUG, logger="dwcp.daemon.sdnotify"):
        assert n.watchdog() is False
        assert n.status("still here") is False
        assert n.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "failed" in warnings[0].getMessage()
    assert n.failed == 3
    # systemd comes back on the same path: the kept socket reaches it again
    back = FakeSystemd(path)
    try:
        assert n.status("back") and back.recv() == "STATUS=back"
    finally:
        back.close()
    # gone again after working: that is news, one more warning
    os.unlink(path)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="dwcp.daemon.sdnotify"):
        assert n.watchdog() is False and n.watchdog() is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]
    n.close()


def test_refused_socket_does_not_raise(tmp_path, caplog):
    path = str(tmp_path / "stream.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a stream socket refuses datagrams
    listener.bind(path)
    try:
        with caplog.at_level(logging.WARNING, logger="dwcp.daemon.sdnotify"):
            n = Notifier({"NOTIFY_SOCKET": path})
            assert n.ready() is False and n.ready() is False
            assert notify("READY=1", env={"NOTIFY_SOCKET": path}) is False
        assert (
            len([r for r in caplog.records if r.name == "dwcp.daemon.sdnotify"]) == 2
        )  # Notifier once, notify once
        n.close()
    finally:
        listener.close()


def test_notify_one_shot_keeps_working(systemd):
    fake, path = systemd
    assert notify("READY=1", "STATUS=hello", env={"NOTIFY_SOCKET": path})
    assert fake.recv() == "READY=1\nSTATUS=hello"
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(fake.sock.getsockname()) + ".gone"}) is False
