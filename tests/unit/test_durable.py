"""dwcp.durable: atomic replace with fsync of file and directory, exact modes, nothing left behind."""

from __future__ import annotations

import array
import errno
import os
import re
import stat

import pytest

from dwcp import durable
from dwcp.durable import create_temp, discard, fsync_dir, publish, pwrite_all, write_all, write_atomic


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _umask(mask: int):
    class _Ctx:
        def __enter__(self):
            self.old = os.umask(mask)

        def __exit__(self, *exc):
            os.umask(self.old)

    return _Ctx()


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


def test_write_atomic_replaces_bytes_and_text_and_leaves_no_temporary_file(tmp_path):
    p = str(tmp_path / "f")
    write_atomic(p, b"\x00bytes\xff")
    assert open(p, "rb").read() == b"\x00bytes\xff"
    write_atomic(p, "text \u00e9\n")
    assert open(p, "rb").read() == "text \u00e9\n".encode()
    assert os.listdir(tmp_path) == ["f"]


def test_write_atomic_fsyncs_the_file_then_renames_then_fsyncs_the_directory(tmp_path, monkeypatch):
    events = _trace(monkeypatch)
    write_atomic(str(tmp_path / "f"), b"x")
    assert events == ["fsync file", "rename", "fsync dir"]
    events.clear()
    write_atomic(str(tmp_path / "g"), b"x", sync_dir=False)  # the caller fsyncs the directory once
    assert events == ["fsync file", "rename"]


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o400])
@pytest.mark.parametrize("mask", [0, 0o077])
def test_the_file_has_exactly_its_mode_whatever_the_umask(tmp_path, mode, mask):
    p = str(tmp_path / "f")
    with _umask(mask):
        write_atomic(p, b"old", mode=0o600)
        write_atomic(p, b"new", mode=mode)
    assert _mode(p) == mode and open(p, "rb").read() == b"new"


def test_a_key_is_never_born_readable_by_others(tmp_path, monkeypatch):
    """The temporary file is created with the target's mode (os.open's mode, O_EXCL): no wider window."""
    created = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        if flags & os.O_CREAT:
            created.append((os.fspath(path), mode, bool(flags & os.O_EXCL), bool(flags & os.O_NOFOLLOW)))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(durable.os, "open", spy)
    with _umask(0):
        write_atomic(str(tmp_path / "k.key"), b"secret", mode=0o600)
    [(path, mode, excl, nofollow)] = created
    assert os.path.dirname(path) == str(tmp_path) and path.endswith(".k.key.tmp")
    assert (mode, excl, nofollow) == (0o600, True, True)
    assert _mode(tmp_path / "k.key") == 0o600


def test_a_planted_file_or_symlink_at_the_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    monkeypatch.setattr(durable.secrets, "token_hex", lambda n: "fixed")
    os.symlink(victim, tmp_path / ".fixed.f.tmp")
    with pytest.raises(FileExistsError):
        write_atomic(str(tmp_path / "f"), b"evil")
    assert victim.read_bytes() == b"untouched" and not (tmp_path / "f").exists()


class _Crash(BaseException):
    """A kill at that point (not an Exception: nothing may catch it and carry on)."""


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    p = str(tmp_path / "f")
    write_atomic(p, b"old contents", mode=0o640)

    def torn(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left"):
        write_atomic(p, b"new contents, longer than the old", write=torn)
    assert open(p, "rb").read() == b"old contents" and _mode(p) == 0o640
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("step", ["write", "fsync file", "rename", "fsync dir"])
def test_a_crash_at_any_step_leaves_the_old_file_or_the_new_one_whole(tmp_path, monkeypatch, step):
    p = str(tmp_path / "f")
    write_atomic(p, b"old")
    real_fsync, real_replace = os.fsync, os.replace

    def write(fd, data):
        if step == "write":
            os.write(fd, data[:2])
            raise _Crash
        write_all(fd, data)

    def fsync(fd):
        if step == ("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file"):
            raise _Crash
        real_fsync(fd)

    def replace(a, b):
        if step == "rename":
            raise _Crash
        real_replace(a, b)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    with pytest.raises(_Crash):
        write_atomic(p, b"new!", write=write)
    assert open(p, "rb").read() == (b"new!" if step == "fsync dir" else b"old")
    assert os.listdir(tmp_path) == ["f"]


def test_write_all_writes_everything_despite_short_writes(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(durable.os, "write", lambda fd, b: real_write(fd, bytes(b[:3])))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, memoryview(b"0123456789abcdef"))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"0123456789abcdef"


def test_create_temp_then_publish_or_discard(tmp_path, monkeypatch):
    dest = str(tmp_path / "out.bin")
    fd, tmp = create_temp(dest)
    assert os.path.dirname(tmp) == str(tmp_path) and _mode(tmp) == 0o600
    os.write(fd, b"payload")
    os.fsync(fd)
    os.close(fd)
    events = _trace(monkeypatch)
    publish(tmp, dest)
    assert events == ["rename", "fsync dir"]
    assert open(dest, "rb").read() == b"payload" and os.listdir(tmp_path) == ["out.bin"]

    fd, tmp = create_temp(dest)
    os.close(fd)
    discard(tmp)
    discard(tmp)  # gone already: fine
    assert os.listdir(tmp_path) == ["out.bin"]


def test_fsync_dir_accepts_the_current_directory_and_refuses_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fsync_dir("")  # a bare file name's directory
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(str(tmp_path / "f"))


def test_a_relative_path_is_replaced_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_atomic("rel", b"x", mode=0o644)
    assert (tmp_path / "rel").read_bytes() == b"x" and os.listdir(tmp_path) == ["rel"]


# -- failures while creating the temporary file, batched directory fsyncs, names -------------------


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


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


def test_pwrite_all_writes_every_byte_at_its_offset_even_in_short_writes(tmp_path, monkeypatch):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        real = os.pwrite
        monkeypatch.setattr(durable.os, "pwrite", lambda f, d, off: real(f, d[:3], off))  # 3 bytes at a time
        pwrite_all(fd, memoryview(array.array("B", range(10))), 5)
        monkeypatch.undo()
        assert os.pread(fd, 20, 0) == bytes(5) + bytes(range(10))
    finally:
        os.close(fd)
