"""The object store: keys, commits, versions, resume, leases, integrity."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp._testbase.store import put as store_put
from dwcp.digest import chunk_hash, object_digest
from dwcp.errors import IntegrityError, InvalidKeyError, KeyBusyError
from dwcp.storage import ObjectStore, escape_key, unescape_key, validate_key

CS = 4096


def put(store: ObjectStore, key: str, data: bytes, chunk: int = CS):
    return store_put(store, key, data, chunk)


@pytest.mark.parametrize(
    "key", ["../x", "a/../../b", "/abs", "a//b", "", "x" * 300, "a\x00b", "a\nb", "a b", "ü", "a/./b", "a/"]
)
def test_hostile_keys_are_refused(key):
    with pytest.raises(InvalidKeyError):
        validate_key(key)


@pytest.mark.parametrize("where", ["end", "start", "middle"])
@pytest.mark.parametrize("code", [*range(0x20), 0x7F])
def test_every_control_character_is_refused(code, where):
    c = chr(code)
    key = {"end": f"vm/1{c}", "start": f"{c}vm/1", "middle": f"vm{c}/1"}[where]
    with pytest.raises(InvalidKeyError, match="characters outside"):
        validate_key(key)


@given(st.text(alphabet="abcXYZ019._-/:@+=", min_size=1, max_size=60))
def test_escaping_is_one_reversible_file_name(key):
    try:
        validate_key(key)
    except InvalidKeyError:
        return
    name = escape_key(key)
    assert "/" not in name and name not in (".", "..") and unescape_key(name) == key


def test_commit_latest_versions_and_pruning(tmp_path):
    s = ObjectStore(tmp_path, keep_versions=2)
    datas = [os.urandom(10_000) for _ in range(3)]
    for d in datas:
        info = put(s, "vm/1", d)
        assert s.latest("vm/1") == info
        assert bytes(s.open_version(info)) == d
    vs = s.versions("vm/1")
    assert [v.digest for v in vs] == [object_digest(d) for d in (datas[2], datas[1])]
    assert s.keys() == ["vm/1"]
    assert oct(os.stat(tmp_path).st_mode & 0o777) == "0o700"


def test_zero_size_object(tmp_path):
    s = ObjectStore(tmp_path)
    info = put(s, "empty", b"")
    assert info.size == 0 and s.open_version(info) == b""


def test_wrong_digest_keeps_the_previous_version(tmp_path):
    s = ObjectStore(tmp_path)
    good = put(s, "k", b"a" * 9000)
    p = s.begin("k", bytes(16), 9000, CS)  # announces a digest the data will not have
    for i in range(p.nchunks):
        p.write(i, b"b" * min(CS, 9000 - i * CS))
        p.mark_done(i, 0)
    with pytest.raises(IntegrityError):
        p.commit()
    assert s.latest("k") == good and bytes(s.open_version(good)) == b"a" * 9000
    assert not os.listdir(tmp_path / "partial")


def test_lease(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(range(16)), 10, CS)
    with pytest.raises(KeyBusyError, match="busy"):
        s.begin("k", bytes(range(16)), 10, CS)
    p.abort()
    s.begin("k", bytes(range(16)), 10, CS).abort()


def test_resume_after_kill_9(tmp_path):
    data = os.urandom(10 * CS + 100)
    digest = object_digest(data)
    pid = os.fork()
    if pid == 0:  # child: write 6 chunks, then die without any cleanup
        try:
            s = ObjectStore(tmp_path)
            p = s.begin("k", digest, len(data), CS)
            for i in range(6):
                c = data[i * CS : (i + 1) * CS]
                p.write(i, c)
                p.mark_done(i, chunk_hash(c)[0])
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    s = ObjectStore(tmp_path)
    p = s.begin("k", digest, len(data), CS)
    assert p.resumed == 6 and p.missing() == list(range(6, 11))
    assert p.have == bytes([0b00111111, 0])
    assert p.verify_resumed() == []
    for i in p.missing():
        c = data[i * CS : (i + 1) * CS]
        p.write(i, c)
        p.mark_done(i, chunk_hash(c)[0])
    assert bytes(s.open_version(p.commit())) == data


def test_corrupted_resumed_chunk_is_forgotten(tmp_path):
    data = os.urandom(4 * CS)
    digest = object_digest(data)
    s = ObjectStore(tmp_path)
    p = s.begin("k", digest, len(data), CS)
    for i in range(4):
        p.write(i, data[i * CS : (i + 1) * CS])
        p.mark_done(i, chunk_hash(data[i * CS : (i + 1) * CS])[0])
    p.abort()
    with open(p.base + ".part", "r+b") as f:  # bit rot in chunk 2 while nobody held it
        f.seek(2 * CS + 7)
        f.write(bytes([data[2 * CS + 7] ^ 0xFF]))  # always a change, whatever the random byte
    p = s.begin("k", digest, len(data), CS)
    assert p.verify_resumed() == [2] and p.missing() == [2]


def test_mismatched_partial_is_restarted(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(range(16)), 3 * CS, CS)
    p.write(0, bytes(CS))
    p.mark_done(0, 0)
    p.abort()
    p = s.begin("k", bytes(range(16)), 3 * CS, 2 * CS)  # another chunk size: start over
    assert p.resumed == 0 and p.missing() == [0, 1]


def test_a_seeded_partial_resumes_knowing_what_it_was_seeded_from(tmp_path):
    s = ObjectStore(tmp_path)
    v1 = os.urandom(4 * CS)
    base = put(s, "k", v1)
    v2 = bytes(CS) + v1[CS:]
    d2 = object_digest(v2)
    p = s.begin("k", d2, len(v2), CS, preallocate=False)
    p.seed_from(base)
    assert p.seeded_from == base.digest
    p.write(3, v2[3 * CS :])
    p.mark_done(3, chunk_hash(v2[3 * CS :])[0])
    p.abort()  # the sender went away
    p = s.begin("k", d2, len(v2), CS)
    assert p.resumed == 1 and p.seeded_from == base.digest  # chunks 0-2 hold v1's bytes, not zeros
    p.abort()
    p = s.begin("k", bytes(range(16)), len(v2), CS)  # unseeded, nothing received: resumes as unseeded
    p.mark_done(0, 0)
    p.abort()
    assert s.begin("k", bytes(range(16)), len(v2), CS).seeded_from is None


def test_a_partial_with_nothing_received_starts_afresh(tmp_path):
    s = ObjectStore(tmp_path)
    base = put(s, "k", os.urandom(2 * CS))
    d = bytes(range(16))
    p = s.begin("k", d, 2 * CS, CS, preallocate=False)
    p.seed_from(base)
    p.abort()  # killed before any chunk landed (or while seeding)
    p = s.begin("k", d, 2 * CS, CS)
    assert p.resumed == 0 and p.seeded_from is None  # a fresh sparse partial: its holes are zeros
    assert bytes(p.view(0)) == bytes(CS)


def test_a_huge_announced_object_costs_one_bit_per_chunk(tmp_path):
    import tracemalloc

    from dwcp.storage import MAX_CHUNKS, min_chunk_size

    s = ObjectStore(tmp_path)
    size = 1 << 40  # 1 TiB announced (the .part is sparse: nothing is written)
    with pytest.raises(ValueError, match="more than"):
        s.begin("k", bytes(16), size, 4096, preallocate=False)
    cs = min_chunk_size(size)
    assert cs % 4096 == 0 and -(-size // cs) <= MAX_CHUNKS < -(-size // (cs - 4096))
    tracemalloc.start()
    try:
        p = s.begin("k", bytes(16), size, cs, preallocate=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # the bitmap is 128 KiB
    assert os.stat(p.base + ".state").st_blocks * 512 < 1 << 20  # sparse
    p.mark_done(MAX_CHUNKS - 1, 5)
    p.abort()
    p = s.begin("k", bytes(16), size, cs, preallocate=False)
    assert p.resumed == 1 and p.missing()[-1] == MAX_CHUNKS - 2


def test_a_failed_publish_leaves_no_orphan_and_resumes(tmp_path, monkeypatch):
    import errno

    import dwcp.storage as storage
    from dwcp.errors import StorageError

    s = ObjectStore(tmp_path)
    old = put(s, "k", os.urandom(CS))
    new = os.urandom(2 * CS)

    def full(path, data, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage, "write_atomic", full)
    with pytest.raises(StorageError, match="No space left"):
        put(s, "k", new)
    assert set(os.listdir(os.path.dirname(old.path))) == {"LATEST", os.path.basename(old.path)}
    assert s.latest("k") == old
    monkeypatch.undo()
    p = s.begin("k", object_digest(new), len(new), CS)  # every chunk is still there: only commit
    assert p.resumed == 2 and p.missing() == []
    assert bytes(s.open_version(p.commit())) == new


def test_remove_version_keeps_latest_naming_a_file(tmp_path):
    s = ObjectStore(tmp_path, keep_versions=3)
    a, b = put(s, "k", b"a" * 100), put(s, "k", b"b" * 100)
    s.remove_version(a)  # not the latest: LATEST untouched
    assert s.latest("k") == b and [v.digest for v in s.versions("k")] == [b.digest]
    c = put(s, "k", b"c" * 100)
    s.remove_version(c)  # the latest: the newest left takes its place
    assert s.latest("k") == b
    s.remove_version(b)  # the last one: the key is gone
    assert s.latest("k") is None and s.keys() == [] and s.versions("k") == []
    s.remove_version(b)  # already gone: nothing to do
    p = s.begin("k", bytes(16), 10, CS)
    with pytest.raises(KeyBusyError):
        s.remove_version(a)
    p.abort()


def test_concurrent_chunk_writes(tmp_path):
    data = os.urandom(64 * CS)
    s = ObjectStore(tmp_path)
    p = s.begin("k", object_digest(data), len(data), CS)

    def w(start):
        for i in range(start, 64, 4):
            c = data[i * CS : (i + 1) * CS]
            p.write(i, c)
            p.mark_done(i, chunk_hash(c)[0])

    ts = [threading.Thread(target=w, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert bytes(s.open_version(p.commit())) == data


def test_gc_partials(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("old", bytes(range(16)), 10, CS)
    p.abort()
    held = s.begin("held", bytes(range(16)), 10, CS)
    import time

    removed = s.gc_partials(max_age_s=60, now=time.time() + 3600)
    assert len(removed) == 1 and "old" in removed[0]
    held.abort()


def test_unverified_commit_is_only_for_a_digest_of_the_written_bytes(tmp_path):
    # verify=False (a sender keeping its own copy) publishes without re-reading;
    # the default re-reads and refuses a mismatch -- the receiver's path
    s = ObjectStore(str(tmp_path))
    data = os.urandom(3 * CS)
    p = s.begin("k", object_digest(data), len(data), CS)
    for i in range(3):
        p.write(i, data[i * CS : (i + 1) * CS])
        p.mark_done(i, 0)
    info = p.commit(verify=False)
    assert bytes(s.open_version(info)) == data and s.latest("k") == info
    q = s.begin("k", object_digest(b"other" * CS), len(data), CS)
    for i in range(3):
        q.write(i, data[i * CS : (i + 1) * CS])
        q.mark_done(i, 0)
    with pytest.raises(IntegrityError):
        q.commit()
    assert s.latest("k") == info


@pytest.mark.parametrize("chunk", [1 << 20, 3 << 19], ids=["leaf-multiple", "leaf-and-a-half"])
def test_commit_reads_back_only_the_leaves_no_chunk_held_whole(tmp_path, monkeypatch, chunk):
    """Rule 8: the receiver hashes each chunk as it lands; commit needs the leaf hashes, and reads the
    leaves a chunk boundary cut (none when the chunk size is a multiple of the leaf)."""
    from dwcp.digest import LEAF_BYTES

    data = os.urandom(6 << 20)
    s = ObjectStore(tmp_path)
    p = s.begin("k", object_digest(data), len(data), chunk)
    for i in range(p.nchunks):
        off, ln = p.span(i)
        c = data[off : off + ln]
        p.write(i, c)
        ch, blocks = chunk_hash(c)
        p.hashed(off, ln, blocks, c)
        p.mark_done(i, ch)
    cut = p.tree.missing()
    assert cut == ([] if chunk % LEAF_BYTES == 0 else [1, 4])  # leaves 1 and 4 straddle 1.5 MiB chunk edges
    if not cut:
        monkeypatch.setattr(p, "_mapping", lambda: pytest.fail("commit read the object back"))
    assert bytes(s.open_version(p.commit())) == data


def test_a_chunk_that_rots_before_commit_fails_the_digest(tmp_path):
    """The leaves hashed as chunks landed are what the digest checks: bytes that change in the .part
    afterwards (a leaf commit must read, here) fail it."""
    data = os.urandom(3 << 19)
    s = ObjectStore(tmp_path)
    p = s.begin("k", object_digest(data), len(data), 3 << 19)
    p.write(0, data)
    p.mark_done(0, chunk_hash(data)[0])  # not hashed: commit reads every leaf
    with open(p.base + ".part", "r+b") as f:
        f.seek(100)
        f.write(bytes([data[100] ^ 1]))
    with pytest.raises(IntegrityError, match="digest"):
        p.commit()
