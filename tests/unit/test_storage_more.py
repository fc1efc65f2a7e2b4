"""The object store, more: argument checks, META records, resume edge cases, failure paths, mappings."""

from __future__ import annotations

import errno
import logging
import mmap
import os

import pytest

import dwcp.storage as storage
from dwcp.digest import chunk_hash, object_digest
from dwcp.errors import ClosedResourceError, InvalidKeyError, KeyBusyError, StorageError
from dwcp.storage import MAX_KEY_BYTES, ObjectStore, VersionInfo, close_mapping, validate_key

CS = 4096


def put(store: ObjectStore, key: str, data: bytes, chunk: int = CS):
    p = store.begin(key, object_digest(data), len(data), chunk)
    fill(p, data, chunk)
    return p.commit()


def fill(p, data: bytes, chunk: int = CS, chunks=None) -> None:
    for i in range(p.nchunks) if chunks is None else chunks:
        c = data[i * chunk : (i + 1) * chunk]
        p.write(i, c)
        p.mark_done(i, chunk_hash(c)[0])


# -- keys and arguments ---------------------------------------------------------
@pytest.mark.parametrize("bad", [None, b"vm/1", 7])
def test_a_key_that_is_not_a_string_is_refused(bad):
    with pytest.raises(InvalidKeyError, match="non-empty string"):
        validate_key(bad)


def test_a_key_of_exactly_max_key_bytes_is_valid_one_more_is_not():
    assert validate_key("k" * MAX_KEY_BYTES) == "k" * MAX_KEY_BYTES
    with pytest.raises(InvalidKeyError, match="longer than"):
        validate_key("k" * (MAX_KEY_BYTES + 1))


def test_keep_versions_must_be_at_least_one(tmp_path):
    with pytest.raises(ValueError, match="keep_versions"):
        ObjectStore(tmp_path, keep_versions=0)


def test_an_uncreatable_data_directory_is_a_storage_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="cannot create the data directory") as info:
        ObjectStore(tmp_path / "file" / "data")
    assert isinstance(info.value.__cause__, OSError)


def test_the_data_directories_are_private(tmp_path):
    s = ObjectStore(tmp_path / "d")
    for d in ("", "objects", "partial"):
        assert os.stat(os.path.join(s.data_dir, d)).st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("digest", "size", "chunk", "match"),
    [
        (bytes(15), 10, CS, "16 bytes"),
        (bytes(17), 10, CS, "16 bytes"),
        (bytes(16), -1, CS, "size must be"),
        (bytes(16), 10, 0, "chunk_size > 0"),
    ],
)
def test_begin_refuses_bad_arguments_and_takes_no_lease(tmp_path, digest, size, chunk, match):
    s = ObjectStore(tmp_path)
    with pytest.raises(ValueError, match=match):
        s.begin("k", digest, size, chunk)
    s.begin("k", bytes(16), 10, CS).abort()  # the key is not left leased
    assert s.keys() == []


def test_begin_refuses_an_invalid_key_before_touching_the_disk(tmp_path):
    s = ObjectStore(tmp_path)
    with pytest.raises(InvalidKeyError):
        s.begin("../escape", bytes(16), 10, CS)
    assert os.listdir(tmp_path / "partial") == [] and sorted(os.listdir(tmp_path)) == ["objects", "partial"]


# -- reading the store ------------------------------------------------------------
def test_an_unknown_key_has_no_latest_no_versions_and_is_not_listed(tmp_path):
    s = ObjectStore(tmp_path)
    assert s.latest("nope") is None and s.versions("nope") == [] and s.keys() == []
    assert s.get("nope", bytes(16)) is None


def test_keys_lists_only_keys_with_a_latest_version_unescaped(tmp_path):
    s = ObjectStore(tmp_path)
    put(s, "vm/1:disk@a+b=c", b"x" * 10)
    s.write_meta("only/meta", {"a": 1})  # a record but no version: not a key of the store
    assert s.keys() == ["vm/1:disk@a+b=c"]


def test_keys_of_a_store_whose_objects_directory_vanished_is_empty(tmp_path):
    s = ObjectStore(tmp_path)
    os.rmdir(tmp_path / "objects")
    assert s.keys() == []


def test_versions_skips_an_entry_that_vanished_while_listing(tmp_path):
    s = ObjectStore(tmp_path, keep_versions=3)
    info = put(s, "k", b"a" * 100)
    d = os.path.dirname(info.path)
    os.symlink(os.path.join(d, "gone"), os.path.join(d, "00" * 16 + ".obj"))  # stat: not found
    assert s.versions("k") == [info]


def test_versions_lists_latest_first_then_newest(tmp_path):
    s = ObjectStore(tmp_path, keep_versions=3)
    a, b, c = (put(s, "k", bytes([n]) * 100) for n in (1, 2, 3))
    os.utime(a.path, ns=(3_000_000_000, 3_000_000_000))
    os.utime(b.path, ns=(2_000_000_000, 2_000_000_000))
    os.utime(c.path, ns=(1_000_000_000, 1_000_000_000))  # LATEST, yet the oldest mtime
    assert [v.digest for v in s.versions("k")] == [c.digest, a.digest, b.digest]


def test_open_version_of_an_empty_object_is_empty_bytes_and_of_another_a_read_only_mapping(tmp_path):
    s = ObjectStore(tmp_path)
    assert s.open_version(put(s, "e", b"")) == b""
    m = s.open_version(put(s, "k", b"abc" * 1000))
    try:
        assert isinstance(m, mmap.mmap) and bytes(m) == b"abc" * 1000
        with pytest.raises(TypeError):
            m[0:1] = b"z"
    finally:
        m.close()


# -- META records --------------------------------------------------------------------
def test_meta_round_trips_and_is_replaced(tmp_path):
    s = ObjectStore(tmp_path)
    assert s.read_meta("k") is None
    s.write_meta("k", {"b": [1, 2], "a": "x"})
    assert s.read_meta("k") == {"a": "x", "b": [1, 2]}
    s.write_meta("k", {"c": None})
    assert s.read_meta("k") == {"c": None}
    assert os.listdir(tmp_path / "objects" / "k") == ["META.json"]  # no temporary file left


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"a string"'])
def test_an_unreadable_or_non_object_meta_reads_as_none(tmp_path, caplog, content):
    s = ObjectStore(tmp_path)
    s.write_meta("k", {"a": 1})
    (tmp_path / "objects" / "k" / "META.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="dwcp.storage"):
        assert s.read_meta("k") is None
    if content in (b"{not json", b"\xff\xfe"):
        assert "ignoring" in caplog.text


def test_a_meta_that_cannot_be_written_is_a_storage_error(tmp_path):
    s = ObjectStore(tmp_path)
    (tmp_path / "objects" / "k").write_bytes(b"")  # the key's directory is a file
    with pytest.raises(StorageError, match="cannot write the record of 'k'") as info:
        s.write_meta("k", {"a": 1})
    assert isinstance(info.value.__cause__, OSError)


def test_meta_keys_are_validated(tmp_path):
    s = ObjectStore(tmp_path)
    with pytest.raises(InvalidKeyError):
        s.write_meta("../x", {})
    with pytest.raises(InvalidKeyError):
        s.read_meta("a//b")


# -- partial_chunk_size --------------------------------------------------------------
def test_partial_chunk_size_answers_only_for_this_exact_object(tmp_path):
    s = ObjectStore(tmp_path)
    d = bytes(range(16))
    assert s.partial_chunk_size("k", d, 3 * CS) is None  # nothing on disk
    p = s.begin("k", d, 3 * CS, 2 * CS)
    p.mark_done(0, 0)
    p.abort()
    assert s.partial_chunk_size("k", d, 3 * CS) == 2 * CS
    assert s.partial_chunk_size("k", d, 3 * CS + 1) is None  # another size
    state = p.base + ".state"
    raw = open(state, "rb").read()
    open(state, "r+b").write(b"XXXXXXXX")  # another magic
    assert s.partial_chunk_size("k", d, 3 * CS) is None
    with open(state, "r+b") as f:
        f.write(raw[:8])
        f.seek(16)
        f.write(bytes(8))  # chunk size 0
    assert s.partial_chunk_size("k", d, 3 * CS) is None
    with open(state, "r+b") as f:
        f.truncate(10)  # a torn header
    assert s.partial_chunk_size("k", d, 3 * CS) is None
    with pytest.raises(InvalidKeyError):
        s.partial_chunk_size("/abs", d, 3 * CS)


# -- resume edge cases ------------------------------------------------------------------
def _one_chunk_done(s: ObjectStore, data: bytes):
    p = s.begin("k", object_digest(data), len(data), CS)
    fill(p, data, chunks=[0])
    p.abort()
    return p


@pytest.mark.parametrize("damage", ["magic", "part size", "part gone"])
def test_a_partial_that_does_not_match_its_record_starts_afresh(tmp_path, damage):
    s = ObjectStore(tmp_path)
    data = os.urandom(3 * CS)
    old = _one_chunk_done(s, data)
    if damage == "magic":
        with open(old.base + ".state", "r+b") as f:
            f.write(b"NOTDWCP!")
    elif damage == "part size":
        os.truncate(old.base + ".part", 2 * CS)
    else:
        os.unlink(old.base + ".part")
    p = s.begin("k", object_digest(data), len(data), CS)
    assert p.resumed == 0 and p.missing() == [0, 1, 2] and p.verify_resumed() == []
    assert os.path.getsize(p.part_path) == 3 * CS and bytes(p.view(0)) == bytes(CS)  # fresh: zeros
    fill(p, data)
    assert bytes(s.open_version(p.commit())) == data


def test_part_path_is_the_partial_file_and_span_cuts_the_last_chunk_short(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(16), 2 * CS + 5, CS)
    assert p.part_path == p.base + ".part" and os.path.exists(p.part_path)
    assert p.part_path.startswith(os.path.join(s.data_dir, "partial") + os.sep)
    assert [p.span(i) for i in range(p.nchunks)] == [(0, CS), (CS, CS), (2 * CS, 5)]
    for i in (-1, 3):
        with pytest.raises(IndexError):
            p.span(i)
        with pytest.raises(IndexError):
            p.mark_done(i, 0)
        with pytest.raises(IndexError):
            p.wait_chunk(i, 0)
    p.abort()


# -- writing chunks ----------------------------------------------------------------------
def test_a_chunk_of_the_wrong_length_is_refused_and_not_written(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(16), 2 * CS + 5, CS)
    with pytest.raises(ValueError, match="has 5 bytes, got 6"):
        p.write(2, b"x" * 6)
    with pytest.raises(ValueError, match=f"has {CS} bytes"):
        p.write(0, b"x" * (CS - 1))
    assert bytes(p.view(2)) == bytes(5) and p.missing() == [0, 1, 2]
    p.abort()


def test_write_at_writes_inside_the_object_and_refuses_outside(tmp_path):
    s = ObjectStore(tmp_path)
    data = os.urandom(2 * CS)
    p = s.begin("k", object_digest(data), len(data), CS)
    p.write_at(0, data[:100])
    p.write_at(100, memoryview(data)[100:])  # up to the very last byte
    for off, n in ((-1, 1), (2 * CS - 1, 2), (2 * CS, 1)):
        with pytest.raises(ValueError, match="outside"):
            p.write_at(off, b"z" * n)
    assert p.missing() == [0, 1]  # write_at never marks a chunk done
    p.mark_done(0, 0)
    p.mark_done(1, 0)
    assert bytes(s.open_version(p.commit())) == data


def test_a_failed_write_at_is_a_storage_error(tmp_path, monkeypatch):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(16), CS, CS)

    def pwrite(fd, data, off):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(storage.os, "pwrite", pwrite)
    with pytest.raises(StorageError, match="cannot write 'k'") as info:
        p.write_at(0, b"abc")
    assert info.value.__cause__.errno == errno.EIO
    monkeypatch.undo()
    p.abort()


def test_a_failed_progress_record_is_a_storage_error_and_the_chunk_stays_missing(tmp_path, monkeypatch):
    s = ObjectStore(tmp_path)
    data = os.urandom(2 * CS)
    p = s.begin("k", object_digest(data), len(data), CS)
    p.write(0, data[:CS])

    def pwrite(fd, data, off):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.os, "pwrite", pwrite)
    with pytest.raises(StorageError, match="cannot record progress of 'k'"):
        p.mark_done(0, 1)
    monkeypatch.undo()
    assert p.missing() == [0, 1] and p.have == b"\x00" and not p.wait_chunk(0, 0)
    p.abort()
    assert s.partial_chunk_size("k", object_digest(data), len(data)) == CS
    q = s.begin("k", object_digest(data), len(data), CS)
    assert q.resumed == 0  # nothing was recorded done
    q.abort()


def test_a_failed_unmark_is_a_storage_error(tmp_path, monkeypatch):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(16), CS, CS)
    p.mark_done(0, 1)

    def pwrite(fd, data, off):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(storage.os, "pwrite", pwrite)
    try:
        with pytest.raises(StorageError, match="cannot record progress of 'k'"):
            p.unmark(0)
        assert p.is_done(0)  # memory still agrees with .state
    finally:
        monkeypatch.undo()
        p.abort()


def test_unmark_forgets_a_chunk_in_memory_and_on_disk(tmp_path):
    s = ObjectStore(tmp_path)
    d = bytes(range(16))
    p = s.begin("k", d, 2 * CS, CS)
    p.mark_done(0, 1)
    p.mark_done(1, 2)
    assert p.wait_chunk(1, 0)
    p.unmark(1)
    assert p.missing() == [1] and not p.wait_chunk(1, 0)
    p.abort()
    q = s.begin("k", d, 2 * CS, CS)
    assert q.resumed == 1 and q.missing() == [1]
    q.abort()


def test_wait_chunk_answers_at_once_without_waiting(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(16), 2 * CS, CS)
    assert p.wait_chunk(0, 0) is False
    p.mark_done(0, 0)
    assert p.wait_chunk(0, 0) is True and p.wait_chunk(1, 0) is False
    p.abort()


# -- seeding -------------------------------------------------------------------------------
def test_seed_from_is_refused_once_a_chunk_is_held_or_for_another_size(tmp_path):
    s = ObjectStore(tmp_path)
    base = put(s, "k", os.urandom(2 * CS))
    p = s.begin("k", bytes(16), 3 * CS, CS, preallocate=False)
    with pytest.raises(ValueError, match="from a 8192-byte version"):
        p.seed_from(base)
    p.mark_done(2, 0)
    with pytest.raises(ValueError, match="already holds chunks"):
        p.seed_from(VersionInfo("k", base.digest, 3 * CS, base.path))
    assert p.seeded_from is None
    p.abort()


def test_seed_from_a_version_shorter_than_announced_is_a_storage_error(tmp_path):
    s = ObjectStore(tmp_path)
    base = put(s, "k", os.urandom(CS))
    p = s.begin("k", bytes(16), 2 * CS, CS, preallocate=False)
    with pytest.raises(StorageError, match="ended after 4096 bytes"):
        p.seed_from(VersionInfo("k", base.digest, 2 * CS, base.path))  # the file holds only CS bytes
    assert p.seeded_from is None
    p.abort()


def test_seed_from_a_missing_version_is_a_storage_error(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(16), CS, CS, preallocate=False)
    with pytest.raises(StorageError, match="cannot prepare 'k'") as info:
        p.seed_from(VersionInfo("k", bytes(16), CS, str(tmp_path / "nowhere.obj")))
    assert isinstance(info.value.__cause__, FileNotFoundError) and p.seeded_from is None
    p.abort()


# -- commit, abort, leases ---------------------------------------------------------------------
def test_commit_with_missing_chunks_is_refused_and_keeps_the_partial(tmp_path):
    s = ObjectStore(tmp_path)
    data = os.urandom(3 * CS)
    p = s.begin("k", object_digest(data), len(data), CS)
    fill(p, data, chunks=[0, 2])
    with pytest.raises(StorageError, match="1 chunks missing"):
        p.commit()
    assert s.latest("k") is None and os.listdir(tmp_path / "objects") == []
    fill(p, data, chunks=[1])  # the partial is still open and usable
    assert bytes(s.open_version(p.commit())) == data


def test_commit_does_not_need_the_state_file(tmp_path):
    s = ObjectStore(tmp_path)
    data = os.urandom(CS)
    p = s.begin("k", object_digest(data), len(data), CS)
    fill(p, data)
    os.unlink(p.base + ".state")
    info = p.commit()
    assert s.latest("k") == info and os.listdir(tmp_path / "partial") == []


def test_a_closed_partial_refuses_every_operation(tmp_path):
    s = ObjectStore(tmp_path)
    data = os.urandom(CS)
    p = s.begin("k", object_digest(data), len(data), CS)
    fill(p, data)
    p.commit()
    for op in (
        p.fileno,
        lambda: p.view(0),
        lambda: p.write(0, data),
        lambda: p.write_at(0, b"x"),
        lambda: p.mark_done(0, 0),
        lambda: p.unmark(0),
        p.verify_resumed,
        p.commit,
        lambda: p.seed_from(s.latest("k")),
    ):
        with pytest.raises(ClosedResourceError, match="is closed"):
            op()
    p.abort()  # after commit: nothing to do, and the committed version stays
    assert bytes(s.open_version(s.latest("k"))) == data


def test_abort_without_keep_tolerates_files_already_gone(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(16), CS, CS)
    os.unlink(p.base + ".part")
    os.unlink(p.base + ".state")
    p.abort(keep=False)
    assert os.listdir(tmp_path / "partial") == []
    s.begin("k", bytes(16), CS, CS).abort()  # the lease went


def test_a_partial_as_context_manager_keeps_its_files_and_releases_the_lease(tmp_path):
    s = ObjectStore(tmp_path)
    d = bytes(range(16))
    with s.begin("k", d, 2 * CS, CS) as p:
        p.mark_done(1, 0)
        with pytest.raises(KeyBusyError):
            s.begin("k", d, 2 * CS, CS)
    with pytest.raises(ClosedResourceError):
        p.fileno()
    q = s.begin("k", d, 2 * CS, CS)
    assert q.resumed == 1 and q.missing() == [0]
    q.abort()


def test_a_stale_partial_object_cannot_release_a_newer_lease(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("k", bytes(16), CS, CS)
    p.abort()
    q = s.begin("k", bytes(16), CS, CS)
    s._release(p)  # the old Partial is not the lease holder any more
    with pytest.raises(KeyBusyError):
        s.begin("k", bytes(16), CS, CS)
    q.abort()


def test_abort_with_a_live_view_does_not_fail_and_the_view_stays_readable(tmp_path):
    s = ObjectStore(tmp_path)
    data = os.urandom(CS)
    p = s.begin("k", object_digest(data), len(data), CS)
    fill(p, data)
    v = p.view(0)
    p.abort()  # the mapping cannot close while v lives: it goes with v
    assert bytes(v) == data
    v.release()
    q = s.begin("k", object_digest(data), len(data), CS)
    assert q.resumed == 1
    assert bytes(s.open_version(q.commit())) == data


# -- failed publish ---------------------------------------------------------------------------
def _enospc(path, data, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_publish_of_a_version_already_kept_leaves_it_in_place(tmp_path, monkeypatch):
    s = ObjectStore(tmp_path, keep_versions=3)
    a_data, b_data = os.urandom(CS), os.urandom(CS)
    a = put(s, "k", a_data)
    b = put(s, "k", b_data)
    monkeypatch.setattr(storage, "write_atomic", _enospc)
    with pytest.raises(StorageError, match="cannot commit"):
        put(s, "k", a_data)  # a resend of a kept version, LATEST fails
    monkeypatch.undo()
    assert s.latest("k") == b and s.get("k", a.digest) == a
    assert open(a.path, "rb").read() == a_data


def test_a_failed_publish_whose_undo_fails_leaves_no_orphan_in_objects(tmp_path, monkeypatch):
    # rule 5: a failed commit leaves nothing in objects/ that LATEST does not point to
    s = ObjectStore(tmp_path)
    old = put(s, "k", os.urandom(CS))
    new = os.urandom(2 * CS)
    real_replace = os.replace
    objects = os.path.join(s.data_dir, "objects")

    def replace(src, dst):
        if src.startswith(objects) and src.endswith(".obj"):  # putting it back as the partial
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(storage, "write_atomic", _enospc)
    monkeypatch.setattr(storage.os, "replace", replace)
    with pytest.raises(StorageError, match="No space left"):
        put(s, "k", new)
    monkeypatch.undo()
    assert s.latest("k") == old
    assert set(os.listdir(os.path.dirname(old.path))) == {"LATEST", os.path.basename(old.path)}
    p = s.begin("k", object_digest(new), len(new), CS)  # the .part went: start afresh
    assert p.resumed == 0 and p.missing() == [0, 1]
    fill(p, new)
    assert bytes(s.open_version(p.commit())) == new


# -- versions: removal and pruning -------------------------------------------------------------
def test_keep_versions_one_keeps_only_the_latest(tmp_path):
    s = ObjectStore(tmp_path, keep_versions=1)
    put(s, "k", b"a" * 10)
    b = put(s, "k", b"b" * 10)
    assert s.versions("k") == [b] and s.latest("k") == b


def test_removing_a_version_of_an_unknown_key_does_nothing(tmp_path):
    s = ObjectStore(tmp_path)
    s.remove_version(VersionInfo("k", bytes(16), 1, str(tmp_path / "objects" / "k" / ("00" * 16 + ".obj"))))
    assert s.keys() == [] and s.latest("k") is None


def test_remove_version_failure_is_a_storage_error(tmp_path, monkeypatch):
    s = ObjectStore(tmp_path)
    a = put(s, "k", b"a" * 10)

    def unlink(path, *a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(storage.os, "unlink", unlink)
    with pytest.raises(StorageError, match=f"cannot remove version {a.digest.hex()} of 'k'"):
        s.remove_version(a)
    monkeypatch.undo()
    assert s.latest("k") == a


# -- gc_partials ----------------------------------------------------------------------------------
def test_gc_partials_keeps_young_ones_and_ignores_stray_files(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("young", bytes(16), 10, CS)
    p.abort()
    (tmp_path / "partial" / "stray.txt").write_bytes(b"")
    mtime = os.stat(p.base + ".state").st_mtime
    assert s.gc_partials(max_age_s=0, now=mtime) == []  # age 0 is not older than 0
    assert os.path.exists(p.base + ".part") and os.path.exists(p.base + ".state")
    assert s.gc_partials(max_age_s=0, now=mtime + 1) == [p.base]
    assert os.listdir(tmp_path / "partial") == ["stray.txt"]


def test_gc_partials_removes_a_state_whose_part_is_gone_and_skips_a_dangling_state(tmp_path):
    s = ObjectStore(tmp_path)
    p = s.begin("a", bytes(16), 10, CS)
    p.abort()
    os.unlink(p.base + ".part")
    dangling = tmp_path / "partial" / "b.state"
    os.symlink(tmp_path / "nowhere", dangling)  # stat: vanished meanwhile
    mtime = os.stat(p.base + ".state").st_mtime
    assert s.gc_partials(max_age_s=1, now=mtime + 100) == [p.base]
    assert os.listdir(tmp_path / "partial") == ["b.state"]


# -- close_mapping ------------------------------------------------------------------------------
def _mapping(tmp_path) -> mmap.mmap:
    f = tmp_path / "m"
    f.write_bytes(b"abcd" * 1024)
    with open(f, "rb") as fh:
        return mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)


def test_close_mapping_closes_a_mapping_with_no_views(tmp_path):
    m = _mapping(tmp_path)
    close_mapping(m)
    assert m.closed


def test_close_mapping_collects_views_left_in_reference_cycles(tmp_path):
    m = _mapping(tmp_path)

    class Frame:
        pass

    f = Frame()
    f.self, f.view = f, memoryview(m)[0:4]  # a cycle only the collector frees
    del f
    close_mapping(m)
    assert m.closed


def test_close_mapping_leaves_a_mapping_with_a_live_view_open_without_failing(tmp_path):
    m = _mapping(tmp_path)
    v = memoryview(m)[0:4]
    close_mapping(m)
    assert not m.closed and bytes(v) == b"abcd"
    v.release()
    close_mapping(m)
    assert m.closed
