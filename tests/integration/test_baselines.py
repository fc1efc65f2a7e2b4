"""The sender keeps its baseline without copying bytes through user space (issue 15): a file sent is
cloned or copied in the kernel and kept only if the copy has the digest the receiver verified."""

from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pytest

import dwcp.storage as storage
from dwcp._backend import impl as K
from dwcp._testbase.images import dirty_version, vm_image
from dwcp._testbase.transfer import stored
from dwcp._testbase.transfer import tx_config as _tx_config
from dwcp.config import SecurityConfig
from dwcp.storage import ObjectStore
from dwcp.transport.sender import Sender
from dwcp.transport.source import FileSource

PLAIN = SecurityConfig(plaintext=True)
MiB = 1 << 20
KERNEL = ("reflink", "copy_file_range")


def tx_config(**kw):
    return _tx_config(**{"adaptive_chunks": False, **kw})


def send_file(sender: Sender, server, path, key: str, **kw):
    with FileSource.open(str(path)) as src:
        return sender.send(src, *server.address, key, streams=2, **kw)


def kept(baselines: ObjectStore, server, key: str) -> bytes | None:
    host, port = server.address
    info = baselines.latest(f"{host}:{port}/{key}")
    return None if info is None else bytes(baselines.open_version(info))


def test_a_file_is_kept_by_the_kernel_and_the_next_send_is_a_delta(server, tmp_path):
    v1 = vm_image(8 * MiB, seed=21)
    v2 = dirty_version(v1, fraction=0.05, seed=22)
    path = tmp_path / "vm.img"
    baselines = ObjectStore(tmp_path / "sent")
    sender = Sender(tx_config(), PLAIN, baselines=baselines)
    v1.tofile(path)
    r1 = send_file(sender, server, path, "vm/k")
    assert r1.mode == "full" and r1.baseline in KERNEL  # FICLONE where the file system has it (not ext4)
    assert r1.to_json()["baseline"] == r1.baseline
    assert kept(baselines, server, "vm/k") == v1.tobytes()
    v2.tofile(path)
    r2 = send_file(sender, server, path, "vm/k")
    assert r2.mode == "delta" and r2.wire_bytes < v2.nbytes / 10 and r2.baseline in KERNEL
    assert stored(server, "vm/k") == v2.tobytes() and kept(baselines, server, "vm/k") == v2.tobytes()
    # the same version again: the store holds it, nothing is copied
    assert send_file(sender, server, path, "vm/k").baseline == "held"


def test_a_buffer_is_kept_by_writing_it(server, tmp_path):
    v1 = vm_image(4 * MiB, seed=23)
    baselines = ObjectStore(tmp_path / "sent")
    r = Sender(tx_config(), PLAIN, baselines=baselines).send(v1, *server.address, "vm/buf", streams=2)
    assert r.baseline == "write" and kept(baselines, server, "vm/buf") == v1.tobytes()


def test_no_baselines_store_keeps_nothing(server, tmp_path):
    path = tmp_path / "vm.img"
    vm_image(2 * MiB, seed=24).tofile(path)
    assert send_file(Sender(tx_config(), PLAIN), server, path, "vm/none").baseline is None


def test_without_a_kernel_copy_a_file_is_read_and_written(server, tmp_path, monkeypatch):
    def unsupported(code):
        def f(*args):
            raise OSError(code, os.strerror(code))

        return f

    monkeypatch.setattr(storage, "_ficlone", unsupported(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "copy_file_range", unsupported(errno.EXDEV))  # another file system, old kernel
    v1 = vm_image(4 * MiB, seed=25)
    path = tmp_path / "vm.img"
    v1.tofile(path)
    baselines = ObjectStore(tmp_path / "sent")
    r = send_file(Sender(tx_config(), PLAIN, baselines=baselines), server, path, "vm/rw")
    assert r.baseline == "write" and kept(baselines, server, "vm/rw") == v1.tobytes()


def test_a_file_changed_after_its_chunk_was_sent_is_not_kept(server, tmp_path, caplog):
    v1 = np.random.default_rng(26).integers(0, 256, 8 * MiB, dtype=np.uint8)
    path = tmp_path / "vm.img"
    v1.tofile(path)
    baselines = ObjectStore(tmp_path / "sent")
    sender = Sender(tx_config(), PLAIN, baselines=baselines)
    changed: list[int] = []

    def progress(done, total):
        if done >= MiB and not changed:
            with open(path, "r+b") as f:
                f.write(b"\xa5" * 4096)  # chunk 0, sent already: the chunks still to come are unchanged
            changed.append(done)

    with caplog.at_level(logging.WARNING, logger="dwcp.sender"):
        with FileSource.open(str(path)) as src:
            r = sender.send(src, *server.address, "vm/changes", streams=1, rate_limit_bytes_per_s=6e6,
                            progress=progress)  # fmt: skip
    assert changed and changed[0] < v1.nbytes, "premise: the file changed while the send ran"
    assert r.digest == K.xxh3_128(v1).hex() and stored(server, "vm/changes") == v1.tobytes()
    assert r.baseline is None and kept(baselines, server, "vm/changes") is None
    assert f"{path} changed after it was sent" in caplog.text
    assert os.listdir(tmp_path / "sent" / "partial") == []  # the rejected copy is gone too
    with caplog.at_level(logging.WARNING, logger="dwcp.sender"):
        r2 = send_file(sender, server, path, "vm/changes")
    assert r2.verified and r2.baseline in KERNEL
    assert kept(baselines, server, "vm/changes") == path.read_bytes()


@pytest.mark.parametrize("size", [0, 4097])
def test_odd_sizes_are_kept(server, tmp_path, size):
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path = tmp_path / "f"
    path.write_bytes(data)
    baselines = ObjectStore(tmp_path / "sent")
    r = send_file(Sender(tx_config(), PLAIN, baselines=baselines), server, path, "odd/f")
    assert r.baseline in KERNEL and kept(baselines, server, "odd/f") == data
