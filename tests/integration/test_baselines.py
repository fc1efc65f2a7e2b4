"""The sender keeps its baseline without copying bytes through user space (issue 15): a file sent is
cloned or copied in the kernel and kept only if the copy has the digest the receiver verified."""

from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pytest

import dwcp.storage as storage
from dwcp._testbase.images import dirty_version, vm_image
from dwcp._testbase.transfer import stored
from dwcp._testbase.transfer import tx_config as _tx_config
from dwcp.config import SecurityConfig
from dwcp.digest import object_digest
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
    assert r.digest == object_digest(v1).hex() and stored(server, "vm/changes") == v1.tobytes()
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


# -- --base OLD: the caller keeps its previous versions itself ----------------------------------------


def _cache_key(server, key: str) -> str:
    host, port = server.address
    return f"{host}:{port}/{key}"


def test_base_sends_a_delta_against_old_and_keeps_nothing(server, tmp_path):
    old = vm_image(8 * MiB, seed=31)
    new = dirty_version(old, fraction=0.05, seed=32)
    old_path, new_path = tmp_path / "snap1.img", tmp_path / "snap2.img"
    old.tofile(old_path)
    new.tofile(new_path)
    os.utime(old_path, (1e9, 1e9))  # a snapshot taken long ago (one just written is not cached: racy)
    baselines = ObjectStore(tmp_path / "sent")
    sender = Sender(tx_config(), PLAIN, baselines=baselines)
    r1 = send_file(sender, server, old_path, "vm/snap")  # the first snapshot goes full (and starts the chain)
    assert r1.mode == "full"
    baselines.remove_version(baselines.latest(_cache_key(server, "vm/snap")))  # as if it never kept one
    r2 = send_file(sender, server, new_path, "vm/snap", base=str(old_path))
    assert r2.mode == "delta" and r2.baseline == "caller" and r2.wire_bytes < new.nbytes / 10
    assert stored(server, "vm/snap") == new.tobytes()
    assert baselines.versions(_cache_key(server, "vm/snap")) == []  # nothing of NEW kept
    assert os.listdir(tmp_path / "sent" / "partial") == []
    assert baselines.read_meta(_cache_key(server, "vm/snap"))["deltas"] == 1  # the chain still counts
    # OLD's digest was cached by its identity: a FileSource of it is not hashed again
    cache = (tmp_path / "sent" / "base-digests.json").read_text()
    assert object_digest(old).hex() in cache and str(old_path) in cache


def test_base_old_digest_is_cached_and_a_changed_old_is_hashed_again(tmp_path, monkeypatch):
    from dwcp.transport.source import DigestCache

    path = tmp_path / "old.img"
    path.write_bytes(b"a" * 100_000)
    os.utime(path, (1e9, 1e9))  # long ago: not racy
    cache = DigestCache(str(tmp_path))
    with FileSource.open(str(path)) as src:
        assert cache.digest(src) == (object_digest(b"a" * 100_000), False)
        assert cache.digest(src) == (object_digest(b"a" * 100_000), True)
    with open(path, "r+b") as f:  # same size, mtime set back: the ctime moves all the same
        f.write(b"b")
    os.utime(path, (1e9, 1e9))
    with FileSource.open(str(path)) as src:
        d, cached = cache.digest(src)
    assert not cached and d == object_digest(b"b" + b"a" * 99_999)
    racy = tmp_path / "racy.img"
    racy.write_bytes(b"r" * 1000)  # written just now: hashed every time until it settles
    with FileSource.open(str(racy)) as src:
        assert cache.digest(src)[1] is False and cache.digest(src)[1] is False


def test_base_that_the_receiver_lacks_goes_full_or_pages(server, tmp_path):
    held = vm_image(4 * MiB, seed=33)
    old = dirty_version(held, fraction=0.5, seed=34)  # a version the receiver never got
    new = dirty_version(old, fraction=0.05, seed=35)
    paths = {n: tmp_path / f"{n}.img" for n in ("held", "old", "new")}
    for n, v in (("held", held), ("old", old), ("new", new)):
        v.tofile(paths[n])
    baselines = ObjectStore(tmp_path / "sent")
    sender = Sender(tx_config(), PLAIN, baselines=baselines)
    send_file(sender, server, paths["held"], "vm/lacks")
    r = send_file(sender, server, paths["new"], "vm/lacks", base=str(paths["old"]))
    assert r.mode in ("full", "pages") and r.baseline == "caller"
    assert stored(server, "vm/lacks") == new.tobytes()
    assert [v.digest.hex() for v in baselines.versions(_cache_key(server, "vm/lacks"))] == [
        object_digest(held).hex()
    ]


def test_base_of_another_size_is_not_offered(server, tmp_path):
    old, new = vm_image(4 * MiB, seed=36), vm_image(5 * MiB, seed=37)
    (tmp_path / "old").write_bytes(old.tobytes())
    (tmp_path / "new").write_bytes(new.tobytes())
    sender = Sender(tx_config(), PLAIN, baselines=ObjectStore(tmp_path / "sent"))
    send_file(sender, server, tmp_path / "old", "vm/grew")
    r = send_file(sender, server, tmp_path / "new", "vm/grew", base=str(tmp_path / "old"))
    assert r.mode in ("full", "pages") and stored(server, "vm/grew") == new.tobytes()
    assert not (tmp_path / "sent" / "base-digests.json").exists()  # never hashed


def test_dwcp_send_base_on_the_command_line(server, tmp_path):
    import json
    import subprocess
    import sys

    from dwcp.cli.demo import same_dwcp_env

    old = vm_image(8 * MiB, seed=38)
    new = dirty_version(old, fraction=0.05, seed=39)
    old.tofile(tmp_path / "snap1.img")
    new.tofile(tmp_path / "snap2.img")
    host, port = server.address
    state = tmp_path / "state"

    def dwcp_send(*argv):
        r = subprocess.run([sys.executable, "-m", "dwcp", "send", *argv, "--to", f"{host}:{port}", "--key", "vm/cli",
                            "--plaintext", "--state-dir", str(state), "--json"], capture_output=True, text=True,
                           cwd=tmp_path, env=same_dwcp_env(None), timeout=30)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    first = dwcp_send("snap1.img", "--base", "snap1.img")  # no chain on record yet: full, and nothing kept
    assert first["mode"] == "full" and first["baseline"] == "caller"
    second = dwcp_send("snap2.img", "--base", "snap1.img")
    assert second["mode"] == "delta" and second["baseline"] == "caller"
    assert stored(server, "vm/cli") == new.tobytes()
    assert ObjectStore(state).versions(f"{host}:{port}/vm/cli") == []
