"""The catalog kept in a real etcd (the binary this test starts): EtcdCatalog nodes, and two daemons on it."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp._testbase.daemons import free_ports
from dwcp.cli.demo import same_dwcp_env
from dwcp.config import ConsensusConfig
from dwcp.consensus.etcd import (
    EtcdCatalog,
    EtcdError,
    parse_kvs,
    parse_response,
    parse_watch_message,
    prefix_end,
)
from dwcp.errors import ConfigError

ETCD = shutil.which("etcd")
needs_etcd = pytest.mark.skipif(
    ETCD is None, reason="the etcd binary is not installed (apt-get install etcd-server)"
)


class EtcdServer:
    """One etcd member on loopback free ports, restartable on the same ports and data.

    Alone by default (``t=<peer>``); a member of an ``EtcdCluster`` when given its ``name``, ``ports``
    (client, peer), the cluster's ``initial_cluster`` and ``token``."""

    def __init__(self, root: str, tls=None, *, name: str = "t", ports: tuple[int, int] | None = None,
                 initial_cluster: str = "", token: str = "") -> None:  # fmt: skip
        self.root, self.tls = root, tls  # tls: dwcp.security.certs NodePaths (server cert, key, CA)
        self.name, self.token = name, token
        cport, pport = ports or free_ports(2)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{cport}"
        self.peer = f"http://127.0.0.1:{pport}"
        self.initial_cluster = initial_cluster or f"{name}={self.peer}"
        self.proc: subprocess.Popen | None = None
        self.ctx = None
        if tls:
            import ssl

            self.ctx = ssl.create_default_context(cafile=tls.ca_cert)
            self.ctx.load_cert_chain(tls.cert, tls.key)

    def start(self, timeout_s: float = 30.0) -> None:
        self.launch()
        self.wait_healthy(time.monotonic() + timeout_s)

    def launch(self) -> None:
        """Start the process, not waiting: a cluster member is healthy only once a quorum is up."""
        assert ETCD is not None
        with open(os.path.join(self.root, "etcd.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", self.name, "--data-dir", os.path.join(self.root, "data"), "--listen-client-urls", self.url,
                 "--advertise-client-urls", self.url, "--listen-peer-urls", self.peer,
                 "--initial-advertise-peer-urls", self.peer, "--initial-cluster", self.initial_cluster,
                 *(["--initial-cluster-state", "new", "--initial-cluster-token", self.token] if self.token else []),
                 *(["--cert-file", self.tls.cert, "--key-file", self.tls.key, "--trusted-ca-file", self.tls.ca_cert,
                    "--client-cert-auth"] if self.tls else [])],
                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def wait_healthy(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd {self.name} exited with {self.proc.returncode}: {self.log()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2, context=self.ctx) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {self.name} not healthy in time: {self.log()[-2000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        with open(os.path.join(self.root, "etcd.log"), errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """kill -9 by its PID (Popen.kill: SIGKILL), and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(os.path.join(self.root, "data"), ignore_errors=True)

    def call(self, path: str, req: dict) -> dict:
        r = urllib.request.Request(self.url + path, data=json.dumps(req).encode(), method="POST")
        with urllib.request.urlopen(r, timeout=5, context=self.ctx) as resp:
            return json.loads(resp.read())


class EtcdCluster:
    """``n`` etcd members on loopback free ports, bootstrapped statically (``--initial-cluster``, a fresh
    token), data under ``root``/m<i>; ``close`` kills every member by its PID and waits for it."""

    def __init__(self, root: str, n: int = 3) -> None:
        ports, token = free_ports(2 * n), f"dwcp-t-{uuid.uuid4().hex[:12]}"  # one call: 2n distinct ports
        self.members: list[EtcdServer] = []
        for i in range(n):
            d = os.path.join(root, f"m{i}")
            os.makedirs(d)
            self.members.append(
                EtcdServer(d, name=f"m{i}", ports=(ports[2 * i], ports[2 * i + 1]), token=token)
            )
        initial = ",".join(f"{m.name}={m.peer}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    def start(self, timeout_s: float = 30.0) -> None:
        """Every member launched, then each waited on until healthy (it has a leader); on failure all killed."""
        deadline = time.monotonic() + timeout_s
        try:
            for m in self.members:
                m.launch()
            for m in self.members:
                m.wait_healthy(deadline)
            _until(lambda: self.leader() is not None, timeout_s=max(1.0, deadline - time.monotonic()),
                   what="one leader all live members agree on")  # fmt: skip
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def live(self) -> list[EtcdServer]:
        return [m for m in self.members if m.proc is not None and m.proc.poll() is None]

    @staticmethod
    def member_status(m: EtcdServer) -> dict:
        """/v3/maintenance/status: ``leader`` and ``header.member_id`` (uint64s, as JSON strings)."""
        return m.call("/v3/maintenance/status", {})

    def leader(self) -> EtcdServer | None:
        """The member every live member names as leader, or None (an election, or they disagree)."""
        ids, leaders = {}, set()
        for m in self.live():
            try:
                d = self.member_status(m)
                ids[str(d["header"]["member_id"])] = m
                leaders.add(str(d["leader"]))
            except (OSError, ValueError, KeyError, TypeError):
                return None
        if len(leaders) != 1:
            return None
        return ids.get(leaders.pop())

    def close(self) -> None:
        for m in self.members:
            m.stop()


def _etcd(tmp) -> EtcdServer:
    if ETCD is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    s = EtcdServer(str(tmp))
    s.start()
    return s


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """One etcd for the module; tests keep apart by prefix."""
    s = _etcd(tmp_path_factory.mktemp("etcd"))
    yield s
    s.close()


@pytest.fixture
def own_etcd(tmp_path):
    """An etcd of the test's own, to stop and restart."""
    s = _etcd(tmp_path)
    yield s
    s.close()


@pytest.fixture
def etcd3(tmp_path):
    """A 3-member etcd cluster of the test's own, a member of which it kills."""
    if ETCD is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    c = EtcdCluster(str(tmp_path / "etcd3"))
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def prefix() -> str:
    return f"/dwcp/t-{uuid.uuid4().hex[:8]}"


class Nodes:
    """EtcdCatalog "nodes", all closed at the end."""

    def __init__(self) -> None:
        self.all: list[EtcdCatalog] = []

    def __call__(self, endpoints, prefix: str, start: bool = True, **kw) -> EtcdCatalog:
        n = EtcdCatalog(tuple(endpoints), prefix, snapshot_check_s=kw.pop("snapshot_check_s", 3600.0), **kw)
        self.all.append(n)
        if start:
            n.start()
            assert n.wait_caught_up(10), n.status()
        return n

    def close(self) -> None:
        for n in self.all:
            n.close()


@pytest.fixture
def nodes():
    ns = Nodes()
    yield ns
    ns.close()


def _version(key: str, digest: str, holder: str = "n0") -> dict:
    return {"op": "version", "key": key, "digest": digest, "size": 1, "holder": holder, "at": 1.0}


def _until(pred, timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _same(a: EtcdCatalog, b: EtcdCatalog) -> bool:
    with a.lock, b.lock:
        return a.catalog.snapshot() == b.catalog.snapshot()


def _log_keys(etcd: EtcdServer, prefix: str) -> int:
    k = (prefix + "/log/").encode()
    d = etcd.call("/v3/kv/range", {"key": base64.b64encode(k).decode(),
                                   "range_end": base64.b64encode(prefix_end(k)).decode(), "count_only": True})  # fmt: skip
    return int(d.get("count", 0))


# -- one node ---------------------------------------------------------------------------------------


@needs_etcd
def test_propose_apply_where_one_node(etcd, prefix, nodes):
    a = nodes([etcd.url], prefix)
    assert a.propose(_version("obj/1", "aa")) == {"ok": True, "version": 1}
    assert a.propose(_version("obj/1", "bb")) == {"ok": True, "version": 2}
    assert a.propose(_version("obj/1", "aa", holder="n1")) == {
        "ok": True,
        "version": 1,
    }  # a known digest gains a holder
    assert a.propose({"op": "nonsense"})["ok"] is False  # refused deterministically, not raised
    assert a.catalog.where() == {"obj/1": {"version": 2, "digest": "bb", "holders": ["n0"]}}
    st_ = a.status()
    assert st_["backend"] == "etcd" and st_["entries_applied"] == 4 and st_["applied_revision"] > 0


@needs_etcd
def test_fails_over_to_the_next_endpoint(etcd, prefix, nodes):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    a = nodes([dead, etcd.url], prefix)
    assert a.propose(_version("k", "d1"))["ok"]
    assert a.status()["endpoint"] == etcd.url and a.status()["failovers"] >= 1


# -- two nodes -------------------------------------------------------------------------------------------


@needs_etcd
def test_two_nodes_converge_under_concurrent_proposals(etcd, prefix, nodes):
    a, b = nodes([etcd.url], prefix), nodes([etcd.url], prefix)
    results: dict[tuple[str, str], dict] = {}
    errors: list[BaseException] = []

    def writer(node: EtcdCatalog, name: str, t: int) -> None:
        try:
            for i in range(40):
                node.propose(_version(f"obj/{i % 7}", f"{name}-{t}-{i}", holder=name))
                if i % 4 == 0:  # the same lease wanted by both nodes at once
                    k = f"lease/{t}-{i}"
                    results[(k, name)] = node.propose(
                        {"op": "lease", "key": k, "holder": name, "until": 1e12, "at": 1.0}
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [
        threading.Thread(target=writer, args=(n, name, t))
        for n, name in ((a, "a"), (b, "b"))
        for t in range(4)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    _until(lambda: _same(a, b), what="equal catalogs")
    leases = {k for k, _ in results}
    assert len(leases) == 4 * 10
    for k in leases:
        won = [name for name in "ab" if results[(k, name)]["ok"]]
        assert len(won) == 1, (k, results[(k, "a")], results[(k, "b")])  # exactly one wins...
        assert (
            a.catalog.leases[k]["holder"] == b.catalog.leases[k]["holder"] == won[0]
        )  # ...and both agree which
    assert sum(len(vs) for vs in a.catalog.keys.values()) == 2 * 4 * 40
    assert a.status()["entries_applied"] == b.status()["entries_applied"] == 2 * 4 * 40 + 2 * 4 * 10


@needs_etcd
def test_late_node_catches_up(etcd, prefix, nodes):
    a = nodes([etcd.url], prefix, page_entries=7)  # several catch-up pages
    for i in range(30):
        a.propose(_version(f"obj/{i % 5}", f"d{i}"))
    late = nodes([etcd.url], prefix, page_entries=7)
    assert _same(a, late)
    a.propose(_version("obj/new", "x"))  # and then follows the watch
    _until(lambda: "obj/new" in late.catalog.where(), what="the watch")
    assert late.status()["entries_applied"] == 31


@needs_etcd
def test_watch_reconnects_after_etcd_restart(own_etcd, prefix, nodes):
    a, b = nodes([own_etcd.url], prefix), nodes([own_etcd.url], prefix)
    for i in range(10):
        a.propose(_version("obj", f"before-{i}"))
    _until(lambda: _same(a, b), what="b following")
    own_etcd.stop()
    time.sleep(0.5)  # the watches see the stream end and start retrying
    own_etcd.start()
    for i in range(10):
        a.propose(_version("obj", f"after-{i}"), timeout_s=20)
    _until(lambda: _same(a, b), what="b after the restart")
    for n in (a, b):
        s = n.status()
        assert s["reconnects"] >= 1, s
        assert s["entries_applied"] == 20, s  # none lost, none applied twice
    assert [v["version"] for v in b.catalog.keys["obj"]] == list(range(1, 21))


# -- a 3-member etcd cluster, its leader killed under writes ---------------------------------------------

# The failover window: a write issued after the kill is acknowledged (applied here) within it.  Seen: ~5 s,
# the gateway's request timeout, for the writes a surviving follower holds while it still follows the dead leader.
FAILOVER_S = 10.0


def _leader_first(c: EtcdCluster) -> tuple[EtcdServer, list[str]]:
    """The leader, and every client URL with the leader's first: clients start on it (endpoint 0)."""
    leader = c.leader()
    assert leader is not None
    return leader, [leader.url, *(u for u in c.urls if u != leader.url)]


@needs_etcd
def test_nodes_keep_proposing_when_the_etcd_leader_is_killed(etcd3, prefix, nodes):
    """kill -9 of the leader both nodes talk to, mid-writes: every proposal still succeeds within
    FAILOVER_S, both catalogs end up with every acknowledged version, once each, and both failed over."""
    leader, eps = _leader_first(etcd3)
    a, b = nodes(eps, prefix), nodes(eps, prefix)
    assert a.status()["endpoint"] == b.status()["endpoint"] == leader.url
    acks: dict[str, tuple[float, float]] = {}  # key -> (issued, acknowledged), monotonic
    errors: list[BaseException] = []

    def writer(node: EtcdCatalog, name: str) -> None:
        try:
            for i in range(30):
                key = f"obj/{name}/{i}"
                t0 = time.monotonic()
                res = node.propose(_version(key, f"{name}{i:02d}", holder=name), timeout_s=FAILOVER_S)
                assert res == {"ok": True, "version": 1}, (key, res)
                acks[key] = (t0, time.monotonic())
                time.sleep(0.03)
        except BaseException as exc:  # reported below
            errors.append(exc)

    ts = [threading.Thread(target=writer, args=(n, name)) for n, name in ((a, "a"), (b, "b"))]
    for t in ts:
        t.start()
    try:
        _until(lambda: len(acks) >= 16 or bool(errors), what="writes before the kill")
        t_kill = time.monotonic()
        leader.stop()  # kill -9, by PID
    finally:
        for t in ts:
            t.join(60)
    assert not errors, errors
    assert len(acks) == 60
    after = {k: ack - t0 for k, (t0, ack) in acks.items() if t0 >= t_kill}
    assert len(after) >= 20, f"only {len(after)} writes issued after the kill"
    assert max(after.values()) < FAILOVER_S, after
    _until(lambda: etcd3.leader() not in (None, leader), what="the two survivors' leader")
    _until(lambda: _same(a, b), what="equal catalogs")
    where = a.catalog.where()
    assert {k: (w["digest"], w["holders"], w["version"]) for k, w in where.items()} == {
        f"obj/{n}/{i}": (f"{n}{i:02d}", [n], 1) for n in "ab" for i in range(30)
    }
    for n in (a, b):
        s = n.status()
        assert s["entries_applied"] == 60, s  # none lost, none applied twice
        assert s["endpoint"] != leader.url and s["failovers"] >= 1, s


# -- snapshots ---------------------------------------------------------------------------------------


@needs_etcd
def test_snapshot_trims_the_log_and_a_late_node_loads_it(etcd, prefix, nodes):
    a = nodes([etcd.url], prefix, snapshot_chunk_bytes=64)  # several chunks
    for i in range(25):
        a.propose(_version(f"obj/{i % 4}", f"d{i}"))
    assert _log_keys(etcd, prefix) == 25
    rev = a.snapshot()
    assert rev == a.catalog.applied_index
    assert _log_keys(etcd, prefix) == 0  # the snapshot covers them all
    assert a.snapshot() is None  # nothing new to cover
    a.propose(_version("obj/after", "z"))
    late = nodes([etcd.url], prefix)
    s = late.status()
    assert s["snapshots_loaded"] == 1 and s["entries_applied"] == 1, s
    assert _same(a, late)
    # a second snapshot replaces the first: its chunks are gone too
    a.propose(_version("obj/after2", "z"))
    a.snapshot()
    k = (prefix + "/snap/").encode()
    d = etcd.call("/v3/kv/range", {"key": base64.b64encode(k).decode(), "keys_only": True,
                                   "range_end": base64.b64encode(prefix_end(k)).decode()})  # fmt: skip
    dirs = {base64.b64decode(kv["key"]).decode().split("/")[-2] for kv in d.get("kvs", [])}
    assert len(dirs) == 1


@needs_etcd
def test_periodic_snapshot_by_entry_count(etcd, prefix, nodes):
    a = nodes([etcd.url], prefix, snapshot_entries=10, snapshot_check_s=0.2)
    b = nodes([etcd.url], prefix, snapshot_entries=10, snapshot_check_s=0.2)
    for i in range(30):
        (a if i % 2 else b).propose(_version("obj", f"d{i}"))
    _until(lambda: a.status()["snapshots_written"] + b.status()["snapshots_written"] >= 1, what="a snapshot")
    _until(lambda: _log_keys(etcd, prefix) < 10, what="trimming")
    assert _same(a, b)


@needs_etcd
def test_compacted_watch_start_reloads_from_the_snapshot(etcd, prefix, nodes):
    a = nodes([etcd.url], prefix)
    a.propose(_version("obj", "d0"))
    b = nodes([etcd.url], prefix, start=False)
    b.catch_up(time.monotonic() + 5)  # b knows revision R, then falls behind while disconnected
    for i in range(1, 8):
        a.propose(_version("obj", f"d{i}"))
    a.snapshot()
    rev = int(etcd.call("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    etcd.call("/v3/kv/compaction", {"revision": rev})
    with pytest.raises(EtcdError, match="compacted"):
        b._watch()  # rule 3: the watch from R + 1 is refused...
    b.catch_up(time.monotonic() + 5)  # ...and the catch-up loads the snapshot instead
    assert b.status()["snapshots_loaded"] == 1 and _same(a, b)


@needs_etcd
def test_mutual_tls_to_etcd(tmp_path, prefix, nodes):
    from dwcp.security.certs import init_ca, issue_node

    init_ca(tmp_path / "ca", cluster_name="etcd")
    server, client = issue_node(tmp_path / "ca", "etcd"), issue_node(tmp_path / "ca", "dwcp")
    (tmp_path / "etcd").mkdir()
    s = EtcdServer(str(tmp_path / "etcd"), tls=server)
    s.start()
    try:
        a = nodes([s.url], prefix, ca_file=client.ca_cert, cert_file=client.cert, key_file=client.key)
        assert a.propose(_version("obj", "d"))["ok"]
        anon = nodes([s.url], prefix, start=False, ca_file=client.ca_cert)  # no client certificate: refused
        with pytest.raises(EtcdError) as ei:
            anon.propose(_version("obj", "e"), timeout_s=1)
        assert ei.value.endpoint == s.url and isinstance(ei.value.__cause__, OSError), (
            ei.value
        )  # the TLS handshake
    finally:
        s.close()


# -- failures and bounds ---------------------------------------------------------------------------------


@needs_etcd
def test_etcd_down_propose_fails_with_a_clear_error_in_time(own_etcd, prefix, nodes):
    a = nodes([own_etcd.url], prefix, request_timeout_s=1.0)
    a.propose(_version("obj", "d0"))
    own_etcd.stop()
    t0 = time.monotonic()
    with pytest.raises(EtcdError) as ei:
        a.propose(_version("obj", "d1"), timeout_s=1.5)
    took = time.monotonic() - t0
    assert took < 1.5 + 0.5, took
    assert ei.value.endpoint == own_etcd.url and own_etcd.url in str(ei.value)


@needs_etcd
def test_response_size_bound(etcd, prefix, nodes):
    a = nodes([etcd.url], prefix)
    for i in range(20):
        a.propose(_version(f"obj/{i}", "d" * 100))
    small = nodes([etcd.url], prefix, start=False, max_response_bytes=512)
    with pytest.raises(EtcdError, match="512-byte limit"):
        small.catch_up(time.monotonic() + 5)


def test_response_size_refused_before_reading(tmp_path):
    """A server that announces a huge body and sends none: refused at once, not after a read timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    conns: list[socket.socket] = []

    def serve() -> None:
        c, _ = srv.accept()
        conns.append(c)
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    n = EtcdCatalog((f"http://127.0.0.1:{port}",), "/p", max_response_bytes=1 << 20, request_timeout_s=10)
    t0 = time.monotonic()
    try:
        with pytest.raises(EtcdError, match="1000000000 bytes is over"):
            n.propose(_version("k", "d"), timeout_s=10)
        assert time.monotonic() - t0 < 2
    finally:
        for c in conns:
            c.close()
        srv.close()


# -- the gateway parser never raises anything but EtcdError ------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=12), ch, max_size=4),
                     max_leaves=20)  # fmt: skip
_keys = st.sampled_from(["result", "header", "revision", "events", "kv", "kvs", "key", "value", "mod_revision",
                         "type", "created", "canceled", "compact_revision", "error", "code", "message", "more"])  # fmt: skip
_shaped = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12) |
                       st.sampled_from(["PUT", "DELETE", "aGk=", "12", "-1", "99999999999999999999"]),
                       lambda ch: st.lists(ch, max_size=3) | st.dictionaries(_keys, ch, max_size=5),
                       max_leaves=25)  # fmt: skip


@given(st.integers(100, 599), st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()))
def test_fuzz_parse_response(status, body):
    try:
        assert isinstance(parse_response(status, body), dict)
    except EtcdError:
        pass


@given(st.binary(max_size=200) | _shaped.map(lambda v: json.dumps(v).encode()) |
       _shaped.map(lambda v: json.dumps({"result": v}).encode()))  # fmt: skip
def test_fuzz_parse_watch_message(line):
    try:
        m = parse_watch_message(line)
        assert all(isinstance(kv.key, bytes) and kv.mod_revision >= 0 for kv in m.events)
    except EtcdError:
        pass


@given(_shaped | _shaped.map(lambda v: {"kvs": v}))
def test_fuzz_parse_kvs(d):
    try:
        assert all(isinstance(kv.value, bytes) for kv in parse_kvs(d))
    except EtcdError:
        pass


# -- config ---------------------------------------------------------------------------------------------------


def test_consensus_config_etcd():
    c = ConsensusConfig(
        enabled=True, backend="etcd", etcd_endpoints=("https://10.0.0.1:2379",), etcd_ca="/ca.pem"
    )
    assert c.etcd_prefix == "/dwcp/default"
    for kw, what in [({"backend": "bft"}, "backend"), ({"enabled": True, "backend": "etcd"}, "needs at least one"),
                     ({"etcd_endpoints": ("10.0.0.1:2379",)}, "not http"), ({"etcd_prefix": "dwcp"}, "absolute"),
                     ({"etcd_cert": "/c.pem"}, "give both"),
                     ({"etcd_endpoints": ("http://h:1",), "etcd_ca": "/ca.pem"}, "plain http")]:  # fmt: skip
        with pytest.raises(ConfigError, match=what):
            ConsensusConfig(**kw)


# -- two daemons on one etcd -------------------------------------------------------------------------------------


def _dwcp(*args, cwd, timeout=60):
    return subprocess.run([sys.executable, "-m", "dwcp", *args], capture_output=True, text=True, cwd=cwd,
                          env=same_dwcp_env(), timeout=timeout)  # fmt: skip


def _start_daemons(tmp_path, names, endpoints, prefix: str, procs: list) -> tuple[dict, dict]:
    """``dwcp daemon`` processes on the etcd catalog at ``endpoints`` (appended to ``procs`` as they start,
    for the caller to stop); their data ports and control sockets by name."""
    ports = dict(zip(names, free_ports(len(names))))
    socks = {}
    for node in names:
        data_dir = tmp_path / node
        data_dir.mkdir()
        cfg = tmp_path / f"{node}.toml"
        cfg.write_text(f'[node]\nid = "{node}"\n[listen]\nhost = "127.0.0.1"\ndata_port = {ports[node]}\n'
                       f'metrics_port = -1\n[security]\nplaintext = true\n[storage]\ndata_dir = "{data_dir}"\n'
                       f'[consensus]\nenabled = true\nbackend = "etcd"\netcd_endpoints = {json.dumps(list(endpoints))}\n'
                       f'etcd_prefix = "{prefix}"\n')  # fmt: skip
        with open(tmp_path / f"{node}.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "dwcp", "daemon", "--config", str(cfg)], stdout=log,
                                          stderr=subprocess.STDOUT, env=same_dwcp_env(), cwd=tmp_path))  # fmt: skip
        socks[node] = str(data_dir / "control.sock")
    return ports, socks


@needs_etcd
def test_two_daemons_share_the_catalog_in_etcd(etcd, prefix, tmp_path):
    procs: list[subprocess.Popen] = []
    try:
        ports_, socks = _start_daemons(tmp_path, ("e0", "e1"), [etcd.url], prefix, procs)
        ports = [ports_["e0"], ports_["e1"]]

        def status(node: str) -> dict | None:
            r = _dwcp("status", "--socket", socks[node], "--json", cwd=tmp_path)
            return json.loads(r.stdout) if r.returncode == 0 else None

        _until(lambda: all(status(n) for n in socks), timeout_s=30, what="both daemons up")
        payload = tmp_path / "payload.bin"
        payload.write_bytes(os.urandom(300_000))
        r = _dwcp(
            "send",
            str(payload),
            "--to",
            f"127.0.0.1:{ports[0]}",
            "--key",
            "obj/etcd",
            "--plaintext",
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stdout + r.stderr

        def recorded() -> dict | None:
            st_ = status("e1")
            return (st_ or {}).get("catalog", {}).get("obj/etcd")

        _until(lambda: recorded() is not None, timeout_s=20, what="e0's version in e1's catalog")
        got = recorded()
        assert got is not None and got["version"] == 1 and got["holders"] == ["e0"]
        st1 = status("e1")
        assert st1 is not None and st1["consensus"]["backend"] == "etcd" and st1["raft"] is None
    finally:
        for p in procs:
            _stop_proc(p)


def _stop_proc(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- two daemons on a 3-member etcd, the member they use killed -------------------------------------------------


@needs_etcd
def test_daemons_keep_recording_versions_when_their_etcd_member_is_killed(etcd3, prefix, tmp_path):
    """Issue 16: two daemons on a 3-member etcd, all 3 client URLs listed (the leader's first: both use
    it); 30 sends of small random objects over ~8 s, alternating e0 -> e1 and e1 -> e0 (the receiver
    records the version); after the 10th, kill -9 the member both daemons are using.  Every send is
    acknowledged, every version is in both daemons' catalogs within FAILOVER_S of its acknowledgement
    (at the end, all 30, exactly once each), and both daemons' consensus status shows the failover."""
    from dwcp.daemon import control
    from dwcp.digest import object_digest

    _, eps = _leader_first(etcd3)
    names = ("e0", "e1")
    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    poller: threading.Thread | None = None
    try:
        ports, socks = _start_daemons(tmp_path, names, eps, prefix, procs)

        def status(node: str) -> dict | None:
            try:
                r = control.request(socks[node], {"op": "status"}, timeout_s=10)
            except (OSError, ValueError):
                return None
            return r if r.get("ok") else None

        def consensus(node: str) -> dict:
            return (status(node) or {}).get("consensus") or {}

        _until(
            lambda: all(consensus(n).get("caught_up") for n in names), timeout_s=30, what="both daemons up"
        )
        seen: dict[tuple[str, str], float] = {}  # (daemon, key) -> when its catalog first listed the key

        def poll() -> None:
            while not stop.is_set():
                for n in names:
                    cat = (status(n) or {}).get("catalog") or {}
                    now = time.monotonic()
                    for k in cat:
                        seen.setdefault((n, k), now)
                stop.wait(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        rng = random.Random(16)
        writes: dict[str, tuple[str, str, float]] = {}  # key -> (receiver, digest, acknowledged at)
        victim: EtcdServer | None = None
        for i in range(30):
            if i == 10:
                used = {consensus(n).get("endpoint") for n in names}
                assert used == {eps[0]}, used  # both on the same member: kill it
                victim = next(m for m in etcd3.members if m.url == eps[0])
                was_leader = etcd3.leader() is victim
                victim.stop()  # kill -9, by PID
            src, dst = names[i % 2], names[(i + 1) % 2]
            data = rng.randbytes(rng.randrange(1, 64 << 10))
            path = tmp_path / f"w{i:02d}.bin"
            path.write_bytes(data)
            key = f"obj/w{i:02d}"
            r = control.request(socks[src], {"op": "send", "path": str(path), "to": f"127.0.0.1:{ports[dst]}",
                                             "key": key}, timeout_s=30)  # fmt: skip
            assert r.get("ok"), (key, r)
            writes[key] = (dst, object_digest(data).hex(), time.monotonic())
            time.sleep(0.25)
        assert victim is not None
        _until(lambda: all((n, k) in seen for n in names for k in writes), timeout_s=FAILOVER_S + 5,
               what="every acknowledged version in both catalogs")  # fmt: skip
        stop.set()
        poller.join(10)
        late = {(n, k): round(seen[(n, k)] - writes[k][2], 2) for n in names for k in writes}
        assert max(late.values()) < FAILOVER_S, late
        expected = {k: {"version": 1, "digest": d, "holders": [dst]} for k, (dst, d, _) in writes.items()}
        for n in names:
            r = _dwcp("status", "--socket", socks[n], "--json", cwd=tmp_path)
            assert r.returncode == 0, r.stdout + r.stderr
            st_ = json.loads(r.stdout)
            assert st_["catalog"] == expected, (n, st_["catalog"])
            c = st_["consensus"]
            assert c["endpoint"] != victim.url and c["failovers"] >= 1 and c["reconnects"] >= 1, (n, c)
            assert c["entries_applied"] == 30, (n, c)  # none lost, none applied twice
            assert c["watching"] and c["caught_up"], (n, c)
        _until(
            lambda: etcd3.leader() not in (None, victim),
            what=f"a leader after the kill (victim led: {was_leader})",
        )
    finally:
        stop.set()
        if poller is not None:
            poller.join(10)
        for p in procs:
            _stop_proc(p)
    for n in names:
        log = (tmp_path / f"{n}.log").read_text(errors="replace")
        assert "could not record" not in log, log[-3000:]
