"""Anti-entropy: each daemon keeps the versions the catalog says it should hold.

Theory of operation
-------------------
The catalog (``dwcp.consensus.catalog``) lists each key's versions and who
holds each.  A key's *homes* are the first ``replicas`` members clockwise on
the hash ring (``dwcp.cluster.ring``) over the key's *scope*: every member
(this node and its ``[cluster] peers``), or, when every holder of the key is
in one region of several, that region's members (a key sent to
``region:eu`` stays in eu).  Every ``repair_interval_s`` (and on demand:
``dwcp repair [KEY]``) a daemon plans, from the catalog and its own store:

* for each key of which it is a home and whose latest version it does not
  hold verified in its store (it missed the send, was down, or its copy was
  quarantined by the scrub): one *repair*;
* for each key whose latest stored version the catalog does not list this
  node as holding (the record proposed at its commit was lost: a leader
  change, a partition): an *announcement*, the same ``version`` record again
  (idempotent), so the catalog converges on what the stores hold.  A version
  the catalog does not list at all, of a key it knows, is announced only
  when it came with an origin whose parent the catalog lists (or none): a
  write made where the catalog had no quorum, judged for conflicts now, by
  that origin.

When the node holds an older version of the same size, it first compares the
two versions' chunk-hash trees level by level: the roots differ (the catalog's
digest is not its own), so it asks the holder for the new version's leaf
hashes (op ``leaves``: 16 bytes per MiB) and compares them with its own
version's.  It seeds a partial of the new version from its own bytes and marks
every leaf whose hash matches as received (``seed_partial``), so the push that
follows resumes that partial: only the leaves that differ travel (and those as
a delta when the holder still has the old version).  The receiver re-hashes
every seeded leaf before it counts it, and checks the whole digest at commit.

A repair *pulls* the version: the node asks a holder (``fetch_order``: the
``[cluster] policy``'s pick among healthy holders, failing over to the next)
over a control stream whose HELLO names ``op = "push"``; the holder sends the
version back to this node's data port as an ordinary send.  So the repair is
as delta-aware as any send: the receiver resumes a partial, takes a delta
against the version it holds when the holder still has it too (HELLO's
``base_digest``), or else ``pages`` mode, in which it sends the hashes of its
pages and gets only the pages that differ.  The receiver verifies every chunk
and the object's digest (the root of its chunk-hash tree) and, once
committed, lists itself as a holder in the catalog, as after any send.

Rules
-----
1. ``plan_repairs`` is pure: the catalog's keys, the members and what the
   store holds come in; the repairs go out, oldest version first.
2. A holder pushes only to a member of its ``[cluster] peers`` (the address
   comes from its own config, never from the request), only a version it
   holds, and only to a node the ACL lets read the key; on mutual TLS the
   requesting node is the certificate's identity.
3. Rate-limited: each push sends at most ``repair_rate_bytes_per_s``
   (0: unlimited), and one repair runs at a time per daemon.
4. Counted: versions repaired and failed, bytes moved on the wire, and how
   far behind the oldest missing version is (seconds since it was committed
   elsewhere), as metrics and in ``dwcp status``.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dwcp.digest import LEAF_BYTES
from dwcp.errors import DWCPError, InvalidKeyError, RemoteProtocolError, StorageError
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

from .ring import HashRing

__all__ = [
    "Repair",
    "plan_repairs",
    "key_scope",
    "Repairer",
    "push_handler",
    "request_push",
    "push_timeout_s",
]

log = logging.getLogger("dwcp.repair")


@dataclass(frozen=True)
class Repair:
    """A version this node should hold and does not."""

    key: str
    digest: str  # hex
    size: int
    version: int
    at: float  # when it was first committed (wall clock): how far behind this node is
    holders: tuple[str, ...]  # who holds it, per the catalog
    base: str | None  # the newest version of the key this node holds verified (hex), for a delta


def key_scope(holders: list[str], members: Mapping[str, str]) -> list[str]:
    """The members a key's homes are chosen from: all of them, or, when every holder the catalog
    lists for the key is in one region and the members span several, that region's."""
    regions = {members[h] for h in holders if h in members}
    if len(regions) == 1 and len(set(members.values())) > 1:
        (r,) = regions
        return [m for m, reg in members.items() if reg == r]
    return list(members)


def plan_repairs(keys: Mapping[str, list[dict[str, Any]]], me: str, members: Mapping[str, str], *, replicas: int,
                 vnodes: int, held: Callable[[str, str], bool], only: str | None = None) -> list[Repair]:  # fmt: skip
    """What ``me`` must pull (rule 1): ``keys`` is the catalog's key -> versions (oldest first),
    ``members`` every member's region (``me`` included), ``held(key, digest_hex)`` whether the
    store holds that version verified.  ``only``: one key."""
    out = []
    ring = HashRing(members, vnodes=vnodes)
    for key, vs in keys.items():
        if not vs or (only is not None and key != only):
            continue
        latest = vs[-1]
        if not latest["holders"] or held(key, latest["digest"]):
            continue
        every = sorted({h for v in vs for h in v["holders"]})
        scope = key_scope(every, members)
        homes = ring.with_peers(scope).replicas(key, replicas) if scope else []
        if me not in homes:
            continue
        base = next((v["digest"] for v in reversed(vs[:-1]) if held(key, v["digest"])), None)
        out.append(Repair(key, latest["digest"], int(latest["size"]), int(latest["version"]),
                          float(latest.get("at", 0.0)), tuple(sorted(latest["holders"])), base))  # fmt: skip
    out.sort(key=lambda r: r.at)
    return out


def unlisted(keys: Mapping[str, list[dict[str, Any]]], me: str,
             local: Mapping[str, tuple]) -> list[tuple[str, str, int]]:  # fmt: skip
    """(key, digest hex, size) of each ``local`` latest version (key -> (digest hex, size[, parent]))
    that the catalog's ``keys`` list without ``me`` as a holder, or of a key the catalog lacks (rule 1:
    pure).  A version of a key the catalog knows but not of this digest is left alone (an old version
    it trimmed, recorded again, would become the key's latest) unless it came with an origin whose
    ``parent`` (digest hex, "" for none) the catalog lists, or is "": a write made where the catalog
    had no quorum (a partition), which the catalog judges by that origin (a concurrent write is a
    conflict, never the latest by mistake)."""
    out = []
    for key, (digest, size, *origin) in sorted(local.items()):
        vs = keys.get(key)
        listed = next((v for v in vs if v["digest"] == digest), None) if vs else None
        parent = origin[0] if origin else None
        if (
            not vs
            or (listed is not None and me not in listed["holders"])
            or (
                listed is None
                and parent is not None
                and (parent == "" or any(v["digest"] == parent for v in vs))
            )
        ):
            out.append((key, digest, size))
    return out


LEAF_HASH_BYTES = 16
_READ = 64 * LEAF_BYTES  # leaves hashed per read


def leaf_hashes(path: str, size: int) -> bytes:
    """The leaf hashes of the version stored at ``path`` (dwcp.digest rule 2), one read of the file."""
    from dwcp._backend import impl as _k

    out = bytearray()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for off in range(0, size, _READ):
            block = os.pread(fd, min(_READ, size - off), off)
            if len(block) != min(_READ, size - off):
                raise StorageError(f"{path} is shorter than its {size} bytes")
            out += _k.block_hashes(block, LEAF_BYTES)
    finally:
        os.close(fd)
    return bytes(out)


def _key_of(hello: dict) -> str:
    from dwcp.storage import validate_key

    try:
        return validate_key(hello.get("key", ""))
    except InvalidKeyError as exc:
        raise RemoteProtocolError(f"invalid key: {exc}", C.ERR_BAD_FIELD) from None


def _version(store, key: str, digest: Any):
    """The stored version of ``key`` whose digest is ``digest`` (32 hex digits), or None."""
    if not isinstance(digest, str) or len(digest) != 32:
        return None
    try:
        return store.get(key, bytes.fromhex(digest))
    except ValueError:
        return None


def leaves_handler(*, config: Callable[[], Any], store):
    """The data port's ``leaves`` op: a held version's leaf hashes, for a puller to compare with its own
    (WELCOME, then PAGE_HASHES frames of two u64 per leaf, then DONE)."""
    from dwcp.wire.messages import encode_page_hashes

    def serve(fs, transfer_id: int, hello: dict, identity: str | None, peer: str) -> None:
        cfg, key = config(), _key_of(hello)
        want = str(hello.get("digest", ""))
        if not cfg.security.allows(peer, key, "read"):
            why, info = f"{peer} is not allowed to read {key!r} on {cfg.node.id}", None
        else:
            info, why = _version(store, key, want), f"{cfg.node.id} holds no version {want[:64]} of {key!r}"
        if info is None:
            fs.send(encode_control(C.FRAME_ERROR, transfer_id, {"code": C.ERR_BAD_FIELD, "message": why}))
            return
        leaves = leaf_hashes(info.path, info.size)
        fs.send(
            encode_control(
                C.FRAME_WELCOME, transfer_id, {"mode": "leaves", "size": info.size, "digest": want}
            )
        )
        step = 1 << 19  # 512 KiB of hashes per frame
        for i in range(0, len(leaves), step):
            fs.send(encode_page_hashes(transfer_id, i // 8, leaves[i : i + step]))
        fs.send(encode_control(C.FRAME_DONE, transfer_id, {"ok": True, "digest": want, "size": info.size}))

    return serve


def request_leaves(dialer, host: str, port: int, rep: Repair, *, node: str, timeout_s: float) -> bytes:
    """The leaf hashes of ``rep``'s version, from the holder at ``host:port`` (``leaves_handler``)."""
    from dwcp.transport.sender import Sender, expect
    from dwcp.transport.session import PROTOCOL_VERSION

    fs, _ = dialer.dial(host, port)
    try:
        fs.sock.settimeout(timeout_s)
        fs.send(encode_control(C.FRAME_HELLO, secrets.randbits(63) | 1, {
            "v": PROTOCOL_VERSION, "role": "control", "op": "leaves", "key": rep.key, "digest": rep.digest,
            "node": node}))  # fmt: skip
        w = expect(fs, C.FRAME_WELCOME)
        if w.get("mode") != "leaves" or w.get("size") != rep.size or w.get("digest") != rep.digest:
            raise RemoteProtocolError(
                f"the holder's leaves answer is for another version: {w}", C.ERR_BAD_FIELD
            )
        n = -(-rep.size // LEAF_BYTES)
        hashes = Sender._recv_page_hashes(fs, 2 * n)  # two u64 per leaf: bounded by the catalog's size
        expect(fs, C.FRAME_DONE)
        return hashes
    finally:
        fs.close()


def seed_partial(store, rep: Repair, base, leaves: bytes) -> tuple[int, int]:
    """A partial of ``rep``'s version seeded from ``base`` (a stored version of the same size), with
    every leaf whose hash ``leaves`` (the new version's) shares marked received: a push then sends only
    the others.  Returns (leaves held, leaves in all); (0, n) when a partial of it exists already (a
    push resumes that one) or the leaf size cannot be its chunk size (an object over 1 TiB)."""
    from dwcp.digest import hash_of_blocks
    from dwcp.storage import min_chunk_size

    n = -(-rep.size // LEAF_BYTES)
    if min_chunk_size(rep.size) > LEAF_BYTES or len(leaves) != n * LEAF_HASH_BYTES:
        return 0, n
    own = leaf_hashes(base.path, base.size)
    same = [i for i in range(n) if own[i * LEAF_HASH_BYTES : (i + 1) * LEAF_HASH_BYTES]
            == leaves[i * LEAF_HASH_BYTES : (i + 1) * LEAF_HASH_BYTES]]  # fmt: skip
    if not same:  # every leaf differs (changes spread over the object): a partial would only copy ``base``
        return 0, n
    p = store.begin(rep.key, bytes.fromhex(rep.digest), rep.size, LEAF_BYTES, preallocate=False)
    try:
        if p.resumed or any(p.have):
            return 0, n
        p.seed_from(base)
        for i in same:
            p.mark_done(i, hash_of_blocks(leaves[i * LEAF_HASH_BYTES : (i + 1) * LEAF_HASH_BYTES]))
    finally:
        p.abort(keep=True)
    return len(same), n


def request_push(dialer, host: str, port: int, rep: Repair, *, node: str, rate_bytes_per_s: float,
                 timeout_s: float) -> dict:  # fmt: skip
    """Ask the holder at ``host:port`` to send ``rep``'s version to this node (``node``); returns its
    DONE (``forwarded``: the send it made), raises TransferError with its reason."""
    from dwcp.transport.sender import expect
    from dwcp.transport.session import PROTOCOL_VERSION

    fs, _ = dialer.dial(host, port)
    try:
        hello: dict[str, Any] = {"v": PROTOCOL_VERSION, "role": "control", "op": "push", "key": rep.key,
                                 "digest": rep.digest, "node": node}  # fmt: skip
        if rep.base is not None:
            hello["base_digest"] = rep.base
        if rate_bytes_per_s:
            hello["rate"] = int(rate_bytes_per_s)  # the rate the holder sends at: rule 3
        fs.send(encode_control(C.FRAME_HELLO, secrets.randbits(63) | 1, hello))
        fs.sock.settimeout(timeout_s)
        return expect(fs, C.FRAME_DONE)
    finally:
        fs.close()


def push_handler(*, config: Callable[[], Any], store, sender: Callable[[], Any]):
    """The data port's ``push`` op (rule 2): send a held version to the asking member.

    ``config()``: the node's current Config; ``store``: its ObjectStore; ``sender()``: a Sender
    that sends as this node."""
    from dwcp.storage import close_mapping
    from dwcp.transport.source import FileSource

    def serve(fs, transfer_id: int, hello: dict, identity: str | None, peer: str) -> None:
        import mmap

        cfg, key = config(), _key_of(hello)
        node = identity if identity is not None else str(hello.get("node", ""))
        addr = {p.id: p.address for p in cfg.cluster.peers}.get(node)
        want, base_hex = str(hello.get("digest", "")), hello.get("base_digest")
        rate = float(hello.get("rate") or 0)

        def refuse(code: int, why: str) -> None:
            log.info("push of %s to %s refused: %s", key, node, why)
            fs.send(encode_control(C.FRAME_ERROR, transfer_id, {"code": code, "message": why[:1000]}))

        if addr is None:
            return refuse(
                C.ERR_FORBIDDEN, f"{cfg.node.id} pushes only to its [cluster] peers, and {node!r} is none"
            )
        if not cfg.security.allows(peer, key, "read"):
            return refuse(C.ERR_FORBIDDEN, f"{peer} is not allowed to read {key!r} on {cfg.node.id}")
        info = _version(store, key, want)
        if info is None:
            return refuse(C.ERR_BAD_FIELD, f"{cfg.node.id} holds no version {want[:64]} of {key!r}")
        base_info = _version(store, key, base_hex)
        host, _, port = addr.rpartition(":")
        with open(info.path, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) if info.size else None
        base = FileSource.open(base_info.path) if base_info is not None else None
        try:
            r = sender().send(m if m is not None else b"", host.strip("[]"), int(port), key, digest=info.digest,
                              base=base, rate_limit_bytes_per_s=rate or None)  # fmt: skip
        except (DWCPError, OSError) as exc:
            return refuse(
                C.ERR_UNAVAILABLE, f"pushing {key} to {node} at {addr} failed: {type(exc).__name__}: {exc}"
            )
        finally:
            if base is not None:
                base.close()
            if m is not None:
                close_mapping(m)
        log.info("pushed %s (%s) to %s: %s, %d wire bytes", key, want, node, r.mode, r.wire_bytes)
        fs.send(encode_control(C.FRAME_DONE, transfer_id, {
            "ok": True, "digest": want, "size": info.size,
            "forwarded": {"to": addr, "seconds": r.seconds, "wire_bytes": r.wire_bytes, "mode": r.mode}}))  # fmt: skip

    return serve


class Repairer:
    """The daemon's anti-entropy loop (module docstring): ``run_once`` plans and pulls; a thread runs it
    every ``interval_s``.  ``keys()`` snapshots the catalog (key -> versions), ``members()`` the members'
    regions, ``held(key, digest_hex)`` asks the store, ``order(holders)`` ranks holders as (id, address),
    ``pull(host, port, repair)`` asks one to push (``request_push``) and returns its DONE; ``local()``
    is the store's key -> (latest digest hex, size, parent hex of its origin or None),
    ``announce(key, digest_hex, size)`` records one."""

    def __init__(self, *, me: str, keys: Callable[[], dict], members: Callable[[], dict[str, str]],
                 replicas: Callable[[], int], vnodes: Callable[[], int], held: Callable[[str, str], bool],
                 order: Callable[[list[str]], list[tuple[str, str]]],
                 pull: Callable[[str, int, Repair], dict], local: Callable[[], dict[str, tuple]],
                 announce: Callable[[str, str, int], None], clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.me, self.keys, self.members, self.replicas, self.vnodes = me, keys, members, replicas, vnodes
        self.held, self.order, self.pull, self.clock = held, order, pull, clock
        self.local, self.announce = local, announce
        self.announced = 0
        self.repaired = 0
        self.failed = 0
        self.wire_bytes = 0
        self.behind_s = 0.0  # how long ago the oldest version still missing here was committed elsewhere
        self.passes = 0
        self.last: dict[str, Any] | None = None
        self._lock = threading.Lock()  # one pass at a time (rule 3)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, key: str | None = None) -> dict[str, Any]:
        """One pass (of ``key`` only, if given): what it repaired and what failed, with why."""
        with self._lock:
            keys = self.keys()
            announced = 0
            for k, digest, size in unlisted(keys, self.me, self.local()):
                if key is None or k == key:
                    try:
                        self.announce(k, digest, size)
                    except (DWCPError, OSError) as exc:
                        log.warning("could not list %s version %s in the catalog: %s", k, digest, exc)
                        continue
                    announced += 1
                    log.info("listed %s version %s in the catalog (its record at commit was lost)", k, digest)
            if announced:  # plan from the catalog as it is now: an announced version may be the new latest
                self.announced += announced
                keys = self.keys()
            todo = plan_repairs(keys, self.me, self.members(), replicas=self.replicas(),
                                vnodes=self.vnodes(), held=self.held, only=key)  # fmt: skip
            done, failed = [], []
            for rep in todo:
                errors = []
                for pid, addr in self.order([h for h in rep.holders if h != self.me]):
                    host, _, port = addr.rpartition(":")
                    try:
                        ans = self.pull(host.strip("[]"), int(port), rep)
                    except (DWCPError, OSError, ValueError) as exc:
                        errors.append(f"{pid}: {type(exc).__name__}: {exc}"[:300])
                        continue
                    fw = ans.get("forwarded") or {}
                    self.repaired += 1
                    self.wire_bytes += int(fw.get("wire_bytes", 0))
                    done.append({"key": rep.key, "version": rep.version, "digest": rep.digest, "from": pid,
                                 "mode": fw.get("mode"), "wire_bytes": fw.get("wire_bytes", 0),
                                 "leaves": ans.get("leaves")})  # fmt: skip
                    log.info("repaired %s version %d from %s (%s, %s wire bytes)", rep.key, rep.version, pid,
                             fw.get("mode"), fw.get("wire_bytes"))  # fmt: skip
                    break
                else:
                    self.failed += 1
                    why = "; ".join(errors) or "no holder with a known address"
                    failed.append(
                        {"key": rep.key, "version": rep.version, "digest": rep.digest, "error": why}
                    )
                    log.warning("could not repair %s version %d: %s", rep.key, rep.version, why)
            left = [r for r in todo if not any(d["key"] == r.key and d["digest"] == r.digest for d in done)]
            self.behind_s = max((self.clock() - r.at for r in left), default=0.0)
            self.passes += 1
            self.last = {"planned": len(todo), "repaired": done, "failed": failed, "behind_s": self.behind_s}
            return self.last

    def status(self) -> dict[str, Any]:
        return {"passes": self.passes, "repaired_total": self.repaired, "failed_total": self.failed,
                "announced_total": self.announced, "wire_bytes_total": self.wire_bytes, "behind_s": self.behind_s,
                "last": self.last}  # fmt: skip

    def start(self, interval_s: Callable[[], float]) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s()):
                try:
                    self.run_once()
                except Exception:  # a pass that breaks must not end the loop: the next one retries
                    log.exception("anti-entropy pass failed")

        self._thread = threading.Thread(target=loop, name="dwcp-repair", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()


def push_timeout_s(size: int, rate_bytes_per_s: float, stall_timeout_s: float) -> float:
    """How long a puller waits for the holder's DONE: the send at the repair rate (or 1 MB/s when
    unlimited, far below any link), twice over, plus a stall's worth."""
    return 2 * size / (rate_bytes_per_s or 1e6) + 4 * stall_timeout_s + 10.0
