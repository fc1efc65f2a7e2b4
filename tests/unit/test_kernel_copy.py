"""dwcp.storage.copy_in_kernel and Partial.fill_from: a clone, else copy_file_range, else None (the caller
writes), and a commit that keeps the copy only if it hashes to the object's digest."""

from __future__ import annotations

import errno
import os

import pytest

import dwcp.storage as storage
from dwcp.digest import object_digest
from dwcp.errors import IntegrityError, StorageError
from dwcp.storage import ObjectStore, copy_in_kernel

DATA = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4: not a multiple of a page


def _raise(code: int):
    def f(*args, **kw):
        raise OSError(code, os.strerror(code))

    return f


@pytest.fixture
def fds(tmp_path):
    (tmp_path / "src").write_bytes(DATA)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    yield src, dst, tmp_path / "dst"
    os.close(src)
    os.close(dst)


def test_this_file_system_copies_in_the_kernel(fds):
    src, dst, path = fds
    assert copy_in_kernel(src, dst, len(DATA)) in ("reflink", "copy_file_range")
    assert path.read_bytes() == DATA


def test_a_clone_is_cut_to_the_size_sent(fds, monkeypatch):
    src, dst, path = fds

    def fake_clone(s: int, d: int) -> None:  # a source that grew after the send: the clone takes all of it
        os.write(d, DATA + b"grown since")

    monkeypatch.setattr(storage, "_ficlone", fake_clone)
    assert copy_in_kernel(src, dst, len(DATA)) == "reflink"
    assert path.read_bytes() == DATA


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY])
def test_no_clone_falls_back_to_copy_file_range(fds, monkeypatch, code):
    src, dst, path = fds
    monkeypatch.setattr(storage, "_ficlone", _raise(code))
    assert copy_in_kernel(src, dst, len(DATA)) == "copy_file_range"
    assert path.read_bytes() == DATA


def test_short_copies_are_continued(fds, monkeypatch):
    src, dst, path = fds
    real = os.copy_file_range
    calls = []

    def short(fi, fo, n, oi, oo):
        calls.append(n)
        return real(fi, fo, min(n, 100_000), oi, oo)

    monkeypatch.setattr(storage, "_ficlone", _raise(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "copy_file_range", short)
    assert copy_in_kernel(src, dst, len(DATA)) == "copy_file_range"
    assert len(calls) == -(-len(DATA) // 100_000) and path.read_bytes() == DATA


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL])
def test_no_kernel_copy_says_none_and_leaves_the_file_empty(fds, monkeypatch, code):
    src, dst, path = fds
    real = os.copy_file_range
    calls = []

    def fails_after_a_while(fi, fo, n, oi, oo):
        calls.append(n)
        if len(calls) > 1:  # a failure after some bytes went: nothing half-copied is left behind
            raise OSError(code, os.strerror(code))
        return real(fi, fo, 4096, oi, oo)

    monkeypatch.setattr(storage, "_ficlone", _raise(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "copy_file_range", fails_after_a_while)
    assert copy_in_kernel(src, dst, len(DATA)) is None
    assert path.read_bytes() == b""


def test_a_real_write_error_is_raised_not_fallen_back_from(fds, monkeypatch):
    src, dst, _ = fds
    monkeypatch.setattr(storage, "_ficlone", _raise(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "copy_file_range", _raise(errno.ENOSPC))
    with pytest.raises(OSError) as ei:
        copy_in_kernel(src, dst, len(DATA))
    assert ei.value.errno == errno.ENOSPC


def test_a_source_that_ends_early_leaves_zeros_for_the_digest_to_catch(fds):
    src, dst, path = fds
    assert copy_in_kernel(src, dst, len(DATA) + 8192) in ("reflink", "copy_file_range")
    assert path.read_bytes() == DATA + bytes(8192)


# -- Partial.fill_from: the store keeps a kernel copy only if it has the digest -------------------------


def _store_and_source(tmp_path, data: bytes):
    (tmp_path / "f").write_bytes(data)
    return ObjectStore(tmp_path / "store"), os.open(tmp_path / "f", os.O_RDONLY)


def test_fill_from_then_commit_keeps_the_copy(tmp_path):
    store, fd = _store_and_source(tmp_path, DATA)
    try:
        p = store.begin("k", object_digest(DATA), len(DATA), 1 << 16, preallocate=False)
        assert p.fill_from(fd) in ("reflink", "copy_file_range")
        assert p.missing() == []
        info = p.commit()
    finally:
        os.close(fd)
    assert store.latest("k") == info and bytes(store.open_version(info)) == DATA
    assert os.listdir(tmp_path / "store" / "partial") == []


def test_fill_from_a_changed_source_keeps_nothing(tmp_path):
    store, fd = _store_and_source(tmp_path, DATA[:-1] + b"X")  # not the bytes the digest is of
    try:
        p = store.begin("k", object_digest(DATA), len(DATA), 1 << 16, preallocate=False)
        p.fill_from(fd)
        with pytest.raises(IntegrityError):
            p.commit()
    finally:
        os.close(fd)
    assert store.latest("k") is None and store.versions("k") == []
    assert os.listdir(tmp_path / "store" / "partial") == []


def test_fill_from_without_a_kernel_copy_leaves_the_partial_to_write(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_ficlone", _raise(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "copy_file_range", _raise(errno.EXDEV))
    store, fd = _store_and_source(tmp_path, DATA)
    try:
        p = store.begin("k", object_digest(DATA), len(DATA), 1 << 16, preallocate=False)
        assert p.fill_from(fd) is None
        assert len(p.missing()) == p.nchunks and os.path.getsize(p.part_path) == len(DATA)
        p.abort(keep=False)
    finally:
        os.close(fd)


def test_fill_from_a_disk_error_is_a_storage_error(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_ficlone", _raise(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "copy_file_range", _raise(errno.ENOSPC))
    store, fd = _store_and_source(tmp_path, DATA)
    try:
        p = store.begin("k", object_digest(DATA), len(DATA), 1 << 16, preallocate=False)
        with pytest.raises(StorageError, match="cannot store 'k'"):
            p.fill_from(fd)
        p.abort(keep=False)
    finally:
        os.close(fd)
