"""dwcp.transport.source: what a send reads, and how it says the file changed under it."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
import xxhash

from dwcp.digest import object_digest
from dwcp.errors import DWCPError
from dwcp.transport import source as S
from dwcp.transport.source import BufferSource, FileSource, SourceChangedError, SourceError, as_source


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, (4 << 20) - 1, 4 << 20, (9 << 20) + 17])
def test_the_whole_object_digest_is_the_same_however_it_is_read(impl, tmp_path, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "f"
    path.write_bytes(data)
    want = object_digest(data)
    assert impl.xxh3_128(data) == xxhash.xxh3_128_digest(data)  # the kernel agrees with the xxhash package
    with FileSource.open(str(path)) as src:
        assert src.size == size and src.digest() == want
    assert BufferSource(data).digest() == want


def test_reads_come_back_whole_and_in_the_calling_threads_own_buffer(tmp_path):
    data = os.urandom(3 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    with FileSource.open(str(path)) as src:
        a = src.read(0, 1 << 20)
        assert bytes(a) == data[: 1 << 20]
        b = src.read(1 << 20, 1 << 20)  # the same thread's buffer, reused
        assert bytes(b) == data[1 << 20 : 2 << 20] and bytes(a) == bytes(b)
        other: list[bytes] = []
        t = threading.Thread(target=lambda: other.append(bytes(src.read(2 << 20, 1 << 20))))
        t.start()
        t.join()
        assert other == [data[2 << 20 :]] and bytes(b) == data[1 << 20 : 2 << 20]  # not overwritten
        with pytest.raises(ValueError, match="outside"):
            src.read((3 << 20) - 10, 11)


def test_a_short_read_names_the_file_and_its_sizes(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * (2 << 20))
    with FileSource.open(str(path)) as src:
        os.truncate(path, 1000)
        with pytest.raises(
            SourceChangedError, match=f"^{path} shrank from {2 << 20} to 1000 bytes during the send$"
        ):
            src.read(0, 1 << 20)
        with pytest.raises(SourceChangedError, match="shrank"):
            src.check()


def test_check_sees_a_file_that_grew(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    with FileSource.open(str(path)) as src:
        src.check()
        with open(path, "ab") as f:
            f.write(b"y")
        with pytest.raises(SourceChangedError, match=f"^{path} grew from 100 to 101 bytes during the send$"):
            src.check()


def test_a_read_error_is_a_source_error(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    src = FileSource.open(str(path))
    src.close()
    with pytest.raises(SourceError, match=f"cannot read {path} at byte 0"):
        src.read(0, 10)


def test_special_files_are_refused_before_they_are_opened(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock_path))
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(S.os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    try:
        for path, kind in ((fifo, "a FIFO"), (sock_path, "a socket"), (tmp_path, "a directory"),
                           ("/dev/zero", "a character device"), ("/dev/null", "a character device")):  # fmt: skip
            with pytest.raises(SourceError) as ei:
                FileSource.open(str(path))
            assert (
                str(ei.value)
                == f"{path} is {kind}, not a regular file: dwcp sends regular files and block devices"
            )
    finally:
        srv.close()
    assert opened == []
    assert issubclass(SourceChangedError, SourceError) and issubclass(SourceError, DWCPError)


def test_a_path_swapped_for_a_fifo_after_the_look_neither_hangs_nor_is_sent(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real_stat = os.stat
    # the look sees a regular file; by the open, the path is a FIFO with no writer
    monkeypatch.setattr(
        S.os, "stat", lambda p, *a, **k: real_stat(__file__) if str(p) == str(fifo) else real_stat(p)
    )
    box: list = []

    def try_open():
        try:
            box.append(FileSource.open(str(fifo)))
        except SourceError as exc:
            box.append(exc)

    t = threading.Thread(target=try_open, daemon=True)  # a blocking open would hang here, not the suite
    t.start()
    t.join(5)
    assert not t.is_alive(), "open() of the FIFO blocked"
    assert isinstance(box[0], SourceError) and "is a FIFO" in str(box[0])


def test_as_source_wraps_buffers_and_passes_sources_through(tmp_path):
    arr = np.arange(1000, dtype=np.uint32)
    src = as_source(arr)
    assert isinstance(src, BufferSource) and src.size == 4000 and bytes(src.read(4, 4)) == arr[1:2].tobytes()
    assert as_source(src) is src
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with FileSource.open(str(path)) as fsrc:
        assert as_source(fsrc) is fsrc
    with pytest.raises(ValueError, match="contiguous"):
        as_source(np.arange(10)[::2])
