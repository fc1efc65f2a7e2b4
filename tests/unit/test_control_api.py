"""dwcp.daemon.control: one JSON request per line, with descriptors passed alongside (SCM_RIGHTS)."""

from __future__ import annotations

import os
import time

import pytest

from dwcp.daemon.control import ControlServer, request


@pytest.fixture
def server(tmp_path):
    seen = []

    def handler(req, fds):
        data = os.pread(fds[0], 100, 0) if fds else None
        for fd in fds:
            os.close(fd)
        seen.append((req, data))
        return {"ok": True, "read": data.decode() if data is not None else None}

    srv = ControlServer(str(tmp_path / "c.sock"), handler)
    srv.start()
    yield srv, seen
    srv.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_descriptor_comes_with_its_request(server, tmp_path):
    srv, seen = server
    f = tmp_path / "obj"
    f.write_bytes(b"hello")
    fd = os.open(f, os.O_RDONLY)
    try:
        got = request(srv.path, {"op": "x"}, timeout_s=5, fds=[fd])
    finally:
        os.close(fd)
    assert got == {"ok": True, "read": "hello"} and seen[-1] == ({"op": "x"}, b"hello")
    assert request(srv.path, {"op": "y"}, timeout_s=5) == {"ok": True, "read": None}


def test_too_many_descriptors_are_refused_and_closed(server, tmp_path):
    srv, seen = server
    f = tmp_path / "obj"
    f.write_bytes(b"x")
    fds = [os.open(f, os.O_RDONLY) for _ in range(2)]
    before = _open_fds()
    try:
        got = request(srv.path, {"op": "x"}, timeout_s=5, fds=fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert got["ok"] is False and "at most 1 file descriptors" in got["error"] and seen == []
    # the server's copies are closed too (its end of the connection a moment later)
    deadline = time.monotonic() + 5
    while _open_fds() > before - 2:
        assert time.monotonic() < deadline, "the server kept the descriptors of a refused request"
        time.sleep(0.01)
