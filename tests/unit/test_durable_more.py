"""dwcp.durable, more: failures while creating the temporary file, batched directory fsyncs, names."""

from __future__ import annotations

import array
import errno
import os
import re
import stat

import pytest

from dwcp import durable
from dwcp.durable import create_temp, fsync_dir, publish, write_all, write_atomic


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _trace(monkeypatch) -> list[str]:
    """Record every fsync (of a file or a directory) and rename, in order."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(a, b):
        events.append("rename")
        real_replace(a, b)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    return events


@pytest.mark.parametrize("exc", [OSError(errno.EPERM, "fchmod refused"), KeyboardInterrupt()])
def test_a_failed_fchmod_closes_and_removes_the_temporary_file_and_raises_unchanged(
    tmp_path, monkeypatch, exc
):
    # rule 2 + 3 + 4: the temporary file is fchmod-ed to the exact mode; if that fails, no
    # descriptor and no temporary file are left, and the very exception reaches the caller
    def fchmod(fd, mode):
        raise exc

    monkeypatch.setattr(durable.os, "fchmod", fchmod)
    before = _open_fds()
    with pytest.raises(type(exc)) as info:
        create_temp(str(tmp_path / "key.pem"), 0o600)
    assert info.value is exc
    assert os.listdir(tmp_path) == []
    assert _open_fds() == before


def test_a_failed_fchmod_leaves_the_target_of_write_atomic_as_it_was(tmp_path, monkeypatch):
    target = tmp_path / "cert.pem"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)

    def fchmod(fd, mode):
        raise OSError(errno.EIO, "fchmod failed")

    monkeypatch.setattr(durable.os, "fchmod", fchmod)
    with pytest.raises(OSError) as info:
        write_atomic(str(target), b"new", mode=0o644)
    assert info.value.errno == errno.EIO  # rule 4: OSError, unchanged
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["cert.pem"]


def test_publish_without_sync_dir_leaves_the_directory_fsync_to_the_caller(tmp_path, monkeypatch):
    # several files published into one directory, then ONE directory fsync
    tmps = []
    for name in ("a", "b"):
        fd, tmp = create_temp(str(tmp_path / name))
        os.write(fd, name.encode())
        os.fsync(fd)
        os.close(fd)
        tmps.append((tmp, str(tmp_path / name)))
    events = _trace(monkeypatch)
    for tmp, dest in tmps:
        publish(tmp, dest, sync_dir=False)
    assert events == ["rename", "rename"]
    fsync_dir(str(tmp_path))
    assert events == ["rename", "rename", "fsync dir"]
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    assert (tmp_path / "a").read_bytes() == b"a" and (tmp_path / "b").read_bytes() == b"b"


def test_write_atomic_without_sync_dir_fsyncs_the_file_but_not_the_directory(tmp_path, monkeypatch):
    events = _trace(monkeypatch)
    write_atomic(str(tmp_path / "f"), "text", sync_dir=False)
    assert events == ["fsync file", "rename"]
    assert (tmp_path / "f").read_text() == "text"


def test_an_interrupt_inside_the_write_removes_the_temporary_file_and_keeps_the_target(tmp_path):
    # rule 3: "a write that fails" includes one interrupted by a BaseException
    target = tmp_path / "state"
    target.write_bytes(b"old")

    def write(fd, data):
        os.write(fd, data[:1])
        raise KeyboardInterrupt

    before = _open_fds()
    with pytest.raises(KeyboardInterrupt):
        write_atomic(str(target), b"new content", write=write)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["state"]
    assert _open_fds() == before


def test_write_atomic_routes_the_utf8_bytes_through_the_given_writer(tmp_path):
    seen = []

    def write(fd, data):
        seen.append(data)
        write_all(fd, data)

    write_atomic(str(tmp_path / "t"), "é€", write=write)
    assert seen == ["é€".encode()] and (tmp_path / "t").read_bytes() == "é€".encode()


def test_temporary_names_are_random_hidden_and_beside_the_target(tmp_path):
    # rule 3: .<random>.<name>.tmp in the target's directory; two writers never share one
    dest = str(tmp_path / "LATEST")
    made = [create_temp(dest) for _ in range(8)]
    try:
        names = [os.path.basename(t) for _, t in made]
        assert len(set(names)) == len(names)
        for _, t in made:
            assert os.path.dirname(t) == str(tmp_path)
            assert re.fullmatch(r"\.[0-9a-f]{12}\.LATEST\.tmp", os.path.basename(t))
    finally:
        for fd, t in made:
            os.close(fd)
            os.unlink(t)


def test_write_all_writes_every_byte_of_a_typed_buffer(tmp_path):
    data = array.array("I", range(1000))  # 4000 bytes, items wider than a byte
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, memoryview(data))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data.tobytes()
