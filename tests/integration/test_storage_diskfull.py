"""Disk full on the receiver: a clear error, and the previous version intact."""

from __future__ import annotations

import os

import pytest

from dwcp.digest import chunk_hash, object_digest
from dwcp.errors import StorageError
from dwcp.storage import ObjectStore


@pytest.fixture
def small_fs(small_tmpfs):
    return small_tmpfs("8m")


def test_too_big_for_the_disk(small_fs):
    s = ObjectStore(small_fs)
    old = os.urandom(1 << 20)
    p = s.begin("k", object_digest(old), len(old), 1 << 20)
    p.write(0, old)
    p.mark_done(0, chunk_hash(old)[0])
    good = p.commit()
    with pytest.raises(StorageError, match="No space left") as ei:
        s.begin("k", bytes(range(16)), 64 << 20, 1 << 20)
    assert isinstance(ei.value.__cause__, OSError)
    assert s.latest("k") == good and bytes(s.open_version(good)) == old
    s.begin("k", bytes(range(16)), 1000, 4096).abort()  # the lease was released


def test_disk_fills_during_the_transfer(small_fs):
    s = ObjectStore(small_fs)
    old = os.urandom(1 << 20)
    p = s.begin("k", object_digest(old), len(old), 1 << 20)
    p.write(0, old)
    p.mark_done(0, chunk_hash(old)[0])
    good = p.commit()
    p = s.begin("k", bytes(range(16)), 4 << 20, 1 << 20)  # the space is there when it starts
    with open(small_fs / "filler", "wb") as f:  # then something else eats it
        try:
            f.write(os.urandom(8 << 20))
        except OSError:
            pass
    with pytest.raises(StorageError, match="No space left"):
        for i in range(4):
            p.write(i, b"x" * (1 << 20))
    p.abort(keep=False)
    assert s.latest("k") == good and bytes(s.open_version(good)) == old


def test_transfer_to_a_full_disk(small_fs):
    import numpy as np

    from dwcp._testbase.transfer import server_config
    from dwcp.config import SecurityConfig, TransportConfig
    from dwcp.transport.sender import Sender, TransferError
    from dwcp.transport.server import DataServer

    srv = DataServer(server_config(small_fs / "rx"))
    srv.start()
    try:
        tx = Sender(TransportConfig(chunk_size_bytes=1 << 20), SecurityConfig(plaintext=True))
        small = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8)
        tx.send(small, *srv.address, "vm/d", streams=1)
        big = np.random.default_rng(2).integers(0, 256, 16 << 20, dtype=np.uint8)
        with pytest.raises(TransferError, match="No space left"):
            tx.send(big, *srv.address, "vm/d", streams=1)
        info = srv.store.latest("vm/d")
        assert info is not None and bytes(srv.store.open_version(info)) == small.tobytes()
        tx.send(small[: 1 << 19], *srv.address, "vm/d", streams=1)  # the daemon still serves
    finally:
        srv.close()
