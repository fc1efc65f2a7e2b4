"""Consensus parts around the core: durable storage, the catalog, the wire form of messages."""

from __future__ import annotations

import json
import os
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp.consensus.catalog import MAX_KEY_VERSIONS, Catalog
from dwcp.consensus.raft import Entry, HardState, Msg, MsgType, SnapshotMeta
from dwcp.consensus.storage import FileStorage
from dwcp.consensus.wire import Forward, raft_from_wire, raft_to_wire
from dwcp.errors import DWCPError, ProtocolError, RemoteProtocolError, StorageError
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control


def test_file_storage_survives_a_restart_and_rewrites_a_replaced_suffix(tmp_path):
    s = FileStorage(str(tmp_path))
    s.set_hard(HardState(3, "b", 2))
    s.append([Entry(1, 1, "noop"), Entry(1, 2, "data", b"x"), Entry(2, 3, "data", b"y")])
    s.append([Entry(3, 3, "data", b"z")])  # a new leader replaces index 3
    s.close()
    t = FileStorage(str(tmp_path))
    assert t.hard == HardState(3, "b", 2) and [(e.term, e.data) for e in t.log[1:]] == [
        (1, b""),
        (1, b"x"),
        (3, b"z"),
    ]
    t.append([Entry(3, 4, "conf", b"a,b,c")])
    t.close()
    assert [e.index for e in FileStorage(str(tmp_path)).log] == [0, 1, 2, 3, 4]


def test_a_torn_last_record_is_dropped_and_damage_elsewhere_refused(tmp_path):
    s = FileStorage(str(tmp_path))
    s.append([Entry(1, 1), Entry(1, 2)])
    s.close()
    log = tmp_path / "raft.log"
    with open(log, "ab") as f:
        f.write(b'[1,3,"data","ab')  # a crash mid-write, never acknowledged
    t = FileStorage(str(tmp_path))
    assert t.log[-1].index == 2 and log.read_bytes().endswith(b"\n")
    t.close()
    log.write_bytes(b'[1,1,"data",""]\nnot json\n[1,3,"data",""]\n')
    with pytest.raises(StorageError, match="line 2 is damaged"):
        FileStorage(str(tmp_path))
    log.write_bytes(b'[1,2,"data",""]\n')
    with pytest.raises(StorageError, match="index 2 after 0"):
        FileStorage(str(tmp_path))
    (tmp_path / "raft.log").unlink()
    (tmp_path / "raft.hard").write_text('{"term": 1, "vote": null, "commit": 5}')
    with pytest.raises(StorageError, match="commit index 5 beyond the log"):
        FileStorage(str(tmp_path))


def test_catalog_versions_holders_and_leases():
    c = Catalog()

    def do(i, **cmd):
        return c.apply(i, json.dumps(cmd).encode())

    assert do(1, op="version", key="k", digest="aa", size=10, holder="n1") == {"ok": True, "version": 1}
    assert do(2, op="version", key="k", digest="aa", size=10, holder="n2") == {"ok": True, "version": 1}
    assert do(3, op="version", key="k", digest="bb", size=10, holder="n2") == {"ok": True, "version": 2}
    assert c.where() == {"k": {"version": 2, "digest": "bb", "holders": ["n2"]}}
    do(4, op="drop", key="k", digest="aa", holder="n1")
    assert c.keys["k"][0]["holders"] == ["n2"]
    assert do(5, op="lease", key="k", holder="n1", until=100.0, at=0.0)["ok"]
    r = do(6, op="lease", key="k", holder="n2", until=200.0, at=50.0)
    assert not r["ok"] and "leased to n1" in r["error"]
    assert do(7, op="lease", key="k", holder="n2", until=200.0, at=150.0)["ok"]  # the old lease expired
    assert (
        c.apply(8, b"junk")["ok"] is False
        and do(9, op="nope")["ok"] is False
        and do(10, op="version")["ok"] is False
    )
    do(11, op="version", key="k", digest="aa", size=10, holder="n3", at=5.0)
    assert c.replica_versions()["k"] == [("n2", 2, 0.0), ("n3", 1, 0.0)]  # each holder's newest version
    again = Catalog.restore(json.loads(json.dumps(c.snapshot())))
    assert again.where() == c.where() and again.applied_index == 11


@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000 + b"]" * 100_000,  # json.loads: RecursionError
     b'{"op": "version", "key": ' + b"[" * 5000 + b"]" * 5000 + b', "digest": "a", "size": 1, "holder": "n"}',
     b'{"op": ' + b"[" * 5000 + b"]" * 5000 + b"}"],
    ids=["deep-command", "deep-key", "deep-op"],
)  # fmt: skip
def test_a_deeply_nested_committed_command_is_malformed_not_a_crash(data):
    """Every node applies every committed entry: one that raised would stop every node's core thread."""
    r = Catalog().apply(1, data)
    assert r["ok"] is False and ("malformed" in r["error"] or "unknown op" in r["error"])


def test_catalog_keeps_a_bounded_history_per_key():
    c = Catalog()
    for i in range(1, MAX_KEY_VERSIONS + 41):
        r = c.apply(
            i,
            json.dumps(
                {"op": "version", "key": "vm", "digest": f"{i:032x}", "size": i, "holder": "n1"}
            ).encode(),
        )
        assert r == {"ok": True, "version": i}  # numbering goes on past the trimmed ones
    vs = c.keys["vm"]
    assert (
        len(vs) == MAX_KEY_VERSIONS and vs[0]["version"] == 41 and vs[-1]["version"] == MAX_KEY_VERSIONS + 40
    )
    assert c.where()["vm"]["version"] == MAX_KEY_VERSIONS + 40
    assert (
        len(json.dumps(c.snapshot())) < 200 * MAX_KEY_VERSIONS
    )  # the snapshot does not grow with the history


_ints = st.integers(0, 2**40)
_names = st.text(
    string.ascii_letters + string.digits + "._:@-", min_size=1, max_size=8
)  # node ids (wire.ID_PATTERN)
_entries = st.lists(st.builds(Entry, _ints, st.integers(1, 2**40), st.sampled_from(["data", "noop", "conf"]),
                              st.binary(max_size=64)), max_size=5)  # fmt: skip
_metas = st.builds(
    SnapshotMeta, st.integers(1, 2**40), _ints, st.lists(_names, min_size=1, max_size=5).map(tuple)
)


def _wire_msgs():
    def one(t, src, dst, term):
        b = st.booleans()
        kw = {
            MsgType.VOTE: st.fixed_dictionaries({"last_index": _ints, "last_term": _ints}),
            MsgType.PREVOTE: st.fixed_dictionaries({"last_index": _ints, "last_term": _ints}),
            MsgType.VOTE_RESP: st.fixed_dictionaries({"granted": b}),
            MsgType.PREVOTE_RESP: st.fixed_dictionaries({"granted": b}),
            MsgType.APPEND: st.fixed_dictionaries(
                {
                    "prev_index": _ints,
                    "prev_term": _ints,
                    "commit": _ints,
                    "read_seq": _ints,
                    "entries": _entries.map(tuple),
                }
            ),  # fmt: skip
            MsgType.APPEND_RESP: st.fixed_dictionaries({"success": b, "match": _ints, "read_seq": _ints}),
            MsgType.SNAP: st.fixed_dictionaries(
                {
                    "snap": _metas,
                    "offset": _ints,
                    "done": b,
                    "read_seq": _ints,
                    "data": st.binary(max_size=256),
                }
            ),  # fmt: skip
            MsgType.SNAP_RESP: st.fixed_dictionaries(
                {
                    "snap": _metas.map(lambda m: SnapshotMeta(m.index, m.term)),
                    "match": _ints,
                    "read_seq": _ints,
                }
            ),  # fmt: skip
            MsgType.READ_INDEX: st.fixed_dictionaries({"ctx": st.binary(max_size=64)}),
            MsgType.READ_INDEX_RESP: st.fixed_dictionaries({"ctx": st.binary(max_size=64), "commit": _ints}),
        }[t]
        return kw.map(lambda k: Msg(t, src, dst, term, **k))

    return st.tuples(st.sampled_from(list(MsgType)), _names, _names, _ints).flatmap(lambda a: one(*a))


@given(_wire_msgs())
def test_raft_messages_survive_the_wire(m):
    d = raft_to_wire(m)
    frame = encode_control(C.FRAME_RAFT, 0, d)  # passes the schema
    assert frame[:4] == b"DWCF" and raft_from_wire(json.loads(json.dumps(d))) == m


_junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                               st.text(max_size=8), st.sampled_from(["ab", "zz", "data", "noop", "", "0" * 9])),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                     max_leaves=12)  # fmt: skip
_fields = ["type", "src", "dst", "term", "entries", "data", "match", "commit", "snap_index", "snap_term", "voters",
           "offset", "done", "ctx", "read_seq", "granted", "success", "prev_index", "last_index", "zz"]  # fmt: skip


@given(st.one_of(
    st.dictionaries(st.sampled_from(_fields), _junk, max_size=10),
    st.builds(lambda t, d: {**d, "type": t}, st.sampled_from([t.value for t in MsgType]),
              st.dictionaries(st.sampled_from(_fields[1:]), _junk, max_size=12)),
    _wire_msgs().map(raft_to_wire).flatmap(lambda d: st.sampled_from(sorted(d)).flatmap(
        lambda k: _junk.map(lambda v: {**d, k: v}))),
    _junk,
))  # fmt: skip
def test_raft_from_wire_of_junk_raises_remote_protocol_error_only(d):
    try:
        m = raft_from_wire(d)
    except RemoteProtocolError:
        return
    assert isinstance(m, Forward) or (
        isinstance(m, Msg) and isinstance(m.term, int) and all(isinstance(e.data, bytes) for e in m.entries)
    )


@given(st.dictionaries(st.sampled_from(["type", "src", "dst", "term", "entries", "data", "match", "zz"]),
                       st.one_of(st.integers(-5, 5), st.text(max_size=5), st.lists(st.integers(), max_size=3),
                                 st.booleans(), st.none()), max_size=6))  # fmt: skip
def test_any_raft_dict_is_a_message_or_a_protocol_error(d):
    from dwcp.wire.messages import _validate

    try:
        _validate(C.FRAME_RAFT, d)
        if d.get("type") != "forward":
            raft_from_wire(d)
    except ProtocolError:
        pass
    except DWCPError as exc:  # pragma: no cover - a wrong error type is the bug this looks for
        raise AssertionError(exc) from exc


def test_file_storage_dir_is_private(tmp_path):
    FileStorage(str(tmp_path / "raft")).close()
    assert oct(os.stat(tmp_path / "raft").st_mode & 0o777) == "0o700"


# -- snapshots on disk -------------------------------------------------------------------------------
def test_file_storage_keeps_a_snapshot_and_the_log_after_it(tmp_path):
    s = FileStorage(str(tmp_path))
    s.append([Entry(1, i, "data", b"%d" % i) for i in range(1, 8)])
    s.set_hard(HardState(1, "a", 7))
    s.compact(SnapshotMeta(5, 1, ("a", "b")), b"state@5")
    s.append([Entry(2, 8, "data", b"8")])
    s.close()
    t = FileStorage(str(tmp_path))
    assert t.snap == SnapshotMeta(5, 1, ("a", "b")) and t.snap_data == b"state@5"
    assert [e.index for e in t.log] == [5, 6, 7, 8] and t.log[0].term == 1 and t.hard.commit == 7
    assert b'"index":1,' not in (tmp_path / "raft.log").read_bytes().replace(b" ", b"")
    t.install(SnapshotMeta(20, 3, ("a", "b", "c")), b"leader's")
    t.close()
    u = FileStorage(str(tmp_path))
    assert u.snap.index == 20 and u.snap_data == b"leader's" and [e.index for e in u.log] == [20]
    (tmp_path / "raft.snap").write_bytes((tmp_path / "raft.snap").read_bytes()[:-1] + b"X")
    with pytest.raises(StorageError, match="raft.snap is damaged"):
        FileStorage(str(tmp_path))


class _Crash(Exception):
    pass


def _expected_term(i: int) -> int:
    return 1 if i <= 12 else 2


def _storage_script(s: FileStorage) -> None:
    s.compact(SnapshotMeta(6, 1, ("a",)), b"S6")
    s.append([Entry(1, 11), Entry(1, 12)])
    s.install(SnapshotMeta(20, 2, ("a",)), b"S20")  # a leader's snapshot replaces the log
    s.append([Entry(2, 21)])
    s.set_hard(HardState(2, None, 21))


def test_a_crash_at_any_write_leaves_a_loadable_state(tmp_path, monkeypatch):
    import dwcp.consensus.storage as storage

    points = [0]
    crash_at = [-1]

    def point() -> None:
        points[0] += 1
        if points[0] == crash_at[0]:
            raise _Crash

    class Crashy(FileStorage):
        def _write(self, fd, data):
            point()
            if points[0] + 1 == crash_at[0]:  # the write itself tears: half of it lands
                os.write(fd, data[: len(data) // 2])
                raise _Crash
            super()._write(fd, data)

    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(storage.os, "replace", lambda a, b: (point(), real_replace(a, b))[1])
    monkeypatch.setattr(storage.os, "fsync", lambda fd: (point(), real_fsync(fd))[1])

    def setup(d) -> Crashy:
        s = Crashy(str(d))
        s.append([Entry(1, i) for i in range(1, 11)])
        s.set_hard(HardState(1, None, 10))
        return s

    s = setup(tmp_path / "count")
    points[0] = 0
    _storage_script(s)
    total = points[0]
    assert total > 20
    for k in range(1, total + 2):
        d = tmp_path / f"crash{k}"
        s = setup(d)
        points[0], crash_at[0] = 0, k
        try:
            _storage_script(s)
        except _Crash:
            pass
        s.close()
        crash_at[0] = -1
        t = FileStorage(str(d))  # loads: no StorageError
        assert t.snap.index in (0, 6, 20) and t.snap_data == {0: b"", 6: b"S6", 20: b"S20"}[t.snap.index]
        assert [e.index for e in t.log] == list(range(t.snap.index, t.snap.index + len(t.log)))
        assert all(e.term == _expected_term(e.index) for e in t.log[1:]), k
        assert t.hard.commit <= t.snap.index + len(t.log) - 1
        t.close()


def test_disk_full_mid_write_raises_storage_error_and_the_disk_still_loads(tmp_path):
    import errno

    from dwcp.consensus.raft import RaftNode

    class Full(FileStorage):
        room = 10**9

        def _write(self, fd, data):
            n = min(len(data), self.room)
            os.write(fd, data[:n])
            self.room -= n
            if n < len(data):
                raise OSError(errno.ENOSPC, "No space left on device")

    for room in (0, 30, 100, 333, 1000, 2500):
        d = tmp_path / f"full{room}"
        s = Full(str(d))
        s.room = room
        n = RaftNode("a", ["a"], s, pre_vote=False)
        with pytest.raises(StorageError, match="No space left"):
            while True:
                while n.role.value != "leader":
                    n.tick()
                n.propose(b"x" * 50)
                n.ready()
                if n.applied % 7 == 0:
                    n.compact(n.applied, b"snap" * 20)
        with pytest.raises(StorageError):  # sticky
            n.tick()
        s.close()
        t = FileStorage(str(d))  # what reached the disk loads
        assert [e.index for e in t.log] == list(range(t.snap.index, t.snap.index + len(t.log)))
        t.close()


def test_the_driver_reads_linearizably_snapshots_and_restores(tmp_path):
    from dwcp.consensus.driver import RaftDriver
    from dwcp.transport.dialer import Dialer

    d = RaftDriver("solo", {}, str(tmp_path), dialer=Dialer.plaintext(), tick_s=0.005, snapshot_every=10)
    d.start()
    try:
        for k in range(25):
            assert d.propose(
                {"op": "version", "key": f"k{k % 3}", "digest": f"{k:032x}", "size": k, "holder": "h"}
            )["ok"]
        where = d.read(lambda c: c.where())
        assert where == d.catalog.where() and len(where) == 3
        assert (
            d.snapshots >= 2
            and d.storage.snap.index >= 20
            and d.status()["snapshot_index"] == d.storage.snap.index
        )
        copy = d.read()
        assert copy is not d.catalog and copy.where() == where
    finally:
        d.close()
    again = RaftDriver("solo", {}, str(tmp_path), dialer=Dialer.plaintext(), tick_s=0.005, snapshot_every=10)
    # the snapshot on disk, then the log after it up to the durable commit index
    assert again.installed == 1 and 0 < again.storage.snap.index < again.applied == again.node.commit
    assert again.catalog.where() == where
    again.start()
    try:
        assert again.read(lambda c: c.where()) == where  # the rest of the log replayed once it committed
    finally:
        again.close()


def test_a_proposal_keeps_its_timeout_while_a_round_is_stuck_and_leaves_no_waiter_behind(tmp_path):
    """Proposers do not take the core's lock (a round holds it through its fsync): one handed in while a
    round is stuck times out when asked to, and the next proposal, once the round is over, commits."""
    from dwcp.consensus.driver import RaftDriver
    from dwcp.consensus.raft import NotLeaderError
    from dwcp.transport.dialer import Dialer

    d = RaftDriver("solo", {}, str(tmp_path), dialer=Dialer.plaintext(), tick_s=0.005)
    d.start()
    try:
        cmd = {"op": "version", "key": "k", "digest": f"{1:032x}", "size": 1, "holder": "h"}
        assert d.propose(cmd)["version"] == 1
        with d.lock:  # the core thread cannot run a round
            with pytest.raises(NotLeaderError):
                d.propose({**cmd, "digest": f"{2:032x}"}, timeout_s=0.05)
            assert d._waiters == {}
        assert d.propose({**cmd, "digest": f"{3:032x}"})["ok"]
        assert [v["digest"] for v in d.read(lambda c: c.keys["k"])] == [f"{k:032x}" for k in (1, 2, 3)]
        assert d._waiters == {}
    finally:
        d.close()


def test_a_leader_replicates_before_its_own_fsync_and_everything_else_waits_for_it(tmp_path):
    """Raft thesis 10.2.1: the leader's APPENDs leave before it fsyncs its log (the two disks write at
    once); a follower's answer, and the leader's applying, come only after the fsync."""
    from dwcp._backend import impl as k
    from dwcp.consensus.driver import RaftDriver
    from dwcp.consensus.raft import Role
    from dwcp.transport.dialer import Dialer
    from dwcp.wire.messages import decode_control

    events: list[tuple] = []

    class Link:  # records what the driver sends, message by message
        def __init__(self, dst: str) -> None:
            self.dst, self.msgs = dst, []

        def send(self, frames: bytes) -> None:
            pos, msgs = 0, []
            while pos < len(frames):
                h = k.parse_header(frames, pos)
                msgs.append(
                    raft_from_wire(
                        decode_control(h, frames[pos + C.HEADER_SIZE : pos + C.HEADER_SIZE + h.enc_len])
                    )
                )
                pos += C.HEADER_SIZE + h.enc_len
            self.msgs += msgs
            events.append(("send", self.dst, [m.type.value for m in msgs]))

    def driver(i: str) -> RaftDriver:  # not started: this test runs its rounds
        d = RaftDriver(
            i, {p: "127.0.0.1:9" for p in "abc" if p != i}, str(tmp_path / i), dialer=Dialer.plaintext()
        )
        d.links = {p: Link(p) for p in "abc" if p != i}  # type: ignore[misc]
        sync = d.storage.sync
        d.storage.sync = lambda: (events.append(("sync", i, d.storage._unsynced)), sync())[1]  # type: ignore[method-assign]
        return d

    def sent(link) -> list[Msg]:
        out, link.msgs = link.msgs, []
        return out

    a, b = driver("a"), driver("b")
    while a.node.role is not Role.LEADER:
        a.node.tick()
        for m in a.node.ready().messages:
            if m.type in (MsgType.PREVOTE, MsgType.VOTE):
                a.node.step(Msg(MsgType(m.type.value + "_resp"), m.dst, "a", m.term, granted=True))
    a._release(a._drain())
    for m in sent(a.links["b"]):  # the leader's no-op: b holds it
        b.node.step(m)
    b._release(b._drain())
    for m in sent(b.links["a"]):
        a.node.step(m)
    a._release(a._drain())
    events.clear()
    a.node.propose_batch([json.dumps({"op": "version", "key": "k", "digest": "0" * 32, "size": 1, "holder": "h",
                                      "id": "0123456789abcdef"}).encode()])  # fmt: skip
    a._release(a._drain())
    assert events == [("send", "b", ["append"]), ("send", "c", ["append"]), ("sync", "a", True)]
    assert (
        a.node.commit < a.node.last_index and a.catalog.keys == {}
    )  # nothing applied before a quorum has it
    events.clear()
    for m in sent(a.links["b"]):
        b.node.step(m)
    b._release(b._drain())
    assert events == [
        ("sync", "b", True),
        ("send", "a", ["append_resp"]),
    ]  # b answers once its log is durable
    for m in sent(b.links["a"]):
        a.node.step(m)
    a._release(a._drain())
    assert a.node.commit == a.node.last_index and list(a.catalog.keys) == ["k"]


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1), st.sampled_from(["data", "noop", "conf", "other"]),
       st.binary(max_size=64))  # fmt: skip
def test_a_log_record_is_the_json_it_always_was(term, index, kind, data):
    from dwcp.consensus.storage import _record

    assert _record(Entry(term, index, kind, data)) == json.dumps([term, index, kind, data.hex()],
                                                                 separators=(",", ":")).encode() + b"\n"  # fmt: skip


def test_a_peer_link_keeps_frames_whole_and_in_order_when_the_kernel_takes_part_of_one():
    """Direct writes while the stream is idle; a partial write queues the rest ahead of later frames."""
    import socket
    import threading

    from dwcp.consensus.driver import _PeerLink

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    class FS:  # the FrameSocket surface the link uses
        sock = a

        def send(self, data: bytes) -> None:
            a.sendall(data)

        def close(self) -> None:
            pass

    drv = type("D", (), {"id": "x", "dialer": None, "stopped": threading.Event()})()
    link = _PeerLink(drv, "p", "127.0.0.1:1")
    link._fs = FS()
    frames = [bytes([k]) * (1000 * (k % 7 + 1)) for k in range(200)]  # far more than the socket buffer
    got = bytearray()
    want = sum(map(len, frames))

    def read() -> None:
        while len(got) < want:
            got.extend(b.recv(1 << 16))

    reader = threading.Thread(target=read)
    link.start()
    try:
        for f in frames:
            link.send(f)
        reader.start()
        reader.join(10)
        assert bytes(got) == b"".join(frames)
    finally:
        drv.stopped.set()
        a.close()
        b.close()
