"""The cluster catalog kept in an etcd v3 cluster, for fleets too large for every daemon to vote.

Theory of operation
-------------------
etcd is the replicated log; the ``Catalog`` stays the state machine.  Keys,
under a prefix ``P`` (``/dwcp/<cluster>`` by default):

* ``P/log/<id>`` -- one catalog command (JSON, with its ``id``), written once
  by ``propose`` in a txn (``create_revision == 0``, so a retry after a lost
  answer never writes it twice: the failure branch reads the entry back).
  The entry's ``mod_revision`` (etcd's revision of that txn) is its log index.
* ``P/snapshot`` -- a small pointer ``{"revision", "dir", "chunks", "bytes",
  "sha256"}``: the catalog as of ``revision`` lies in ``P/snap/<dir>/<i>``
  as zlib-compressed ``Catalog.snapshot()`` JSON split in chunks, because
  etcd refuses a value over its ``--max-request-bytes`` (1.5 MiB by default).

Rules
-----
1. Every node applies every log entry, in revision order, exactly once, to
   its local Catalog (``apply(revision, value)``): one applier thread does.
2. Catching up is a loop of single txns, each reading the snapshot pointer
   and the next page of log entries (``min_mod_revision`` = seen + 1, sorted
   by mod revision) at one revision: if the pointer is past what this node
   applied, entries it covers may be gone, so the snapshot is loaded first.
3. Then a watch over ``P/log/`` from seen + 1 (the gateway's streaming
   ``/v3/watch``).  Any failure -- connection lost, etcd restarted, the start
   revision compacted -- goes back to rule 2 on the next endpoint; entries
   at or below the applied revision are skipped, so nothing is applied twice.
4. A snapshot is written by whoever finds enough entries past the current one:
   chunks first, then the pointer by compare-and-swap on its mod revision
   (one writer wins), then the winner deletes the log entries the snapshot
   covers and the previous chunks.  Deleting is safe: a watch replays history,
   and a catch-up that misses them loads the snapshot (rule 2).
5. ``propose`` returns the result of applying its own entry here.  If this node
   loaded a snapshot that covers the entry instead, the result is unknown:
   it says so (``ok`` False, ``committed`` True).
6. Every request goes to the current endpoint and fails over to the next on a
   connection error or a 5xx; all our writes are idempotent, so a retry is
   safe.  A response larger than ``max_response_bytes`` is refused before it
   is read (Content-Length) or as soon as it passes the bound (chunked).
7. Catalog leases stay catalog commands (deterministic), not etcd leases.
8. etcd's own history compaction is the operator's (``--auto-compaction-*``);
   trimming here keeps the live key space small.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import random
import secrets
import socket
import ssl
import threading
import time
import zlib
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from dwcp.errors import ClosedResourceError, EtcdError

from .catalog import Catalog

__all__ = [
    "EtcdCatalog",
    "EtcdError",
    "KV",
    "parse_response",
    "parse_kvs",
    "parse_watch_message",
    "prefix_end",
]

log = logging.getLogger("dwcp.etcd")

MiB = 1 << 20


class KV(NamedTuple):
    key: bytes
    value: bytes
    mod_revision: int


# -- the gateway's JSON mapping (pure functions: the fuzz tests' target) ---------------------------------


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _int(v: Any, what: str, endpoint: str | None) -> int:
    """proto int64 fields come as JSON strings; absent means 0."""
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise EtcdError(f"bad {what} in etcd response: {v!r:.80}", endpoint)
    try:
        n = int(v)
    except ValueError:
        raise EtcdError(f"bad {what} in etcd response: {v!r:.80}", endpoint) from None
    if not 0 <= n < 1 << 63:
        raise EtcdError(f"{what} {n} out of range in etcd response", endpoint)
    return n


def _unb64(v: Any, what: str, endpoint: str | None) -> bytes:
    if v is None:
        return b""
    if not isinstance(v, str):
        raise EtcdError(f"bad {what} in etcd response", endpoint)
    try:
        return base64.b64decode(v, validate=True)
    except ValueError:
        raise EtcdError(f"bad base64 {what} in etcd response", endpoint) from None


def parse_response(status: int, body: bytes, endpoint: str | None = None) -> dict:
    """A gateway answer (HTTP status, body) -> its JSON object; an error answer or garbage raises EtcdError."""
    try:
        d = json.loads(body)
    except (ValueError, RecursionError):
        raise EtcdError(f"HTTP {status} with a body that is not JSON", endpoint) from None
    if not isinstance(d, dict):
        raise EtcdError(f"HTTP {status} with a body that is not a JSON object", endpoint)
    if status != 200 or "error" in d:
        msg = d.get("message") or d.get("error") or f"HTTP {status}"
        code = d.get("code")
        raise EtcdError(f"etcd refused the request: {str(msg)[:200]}", endpoint,
                        code if isinstance(code, int) and not isinstance(code, bool) else None)  # fmt: skip
    return d


def header_revision(d: dict, endpoint: str | None = None) -> int:
    h = d.get("header")
    if not isinstance(h, dict):
        raise EtcdError("etcd response without a header", endpoint)
    return _int(h.get("revision"), "header.revision", endpoint)


def parse_kvs(d: Any, endpoint: str | None = None) -> list[KV]:
    """The ``kvs`` of a range response, validated."""
    if not isinstance(d, dict):
        raise EtcdError("range response is not an object", endpoint)
    kvs = d.get("kvs", [])
    if not isinstance(kvs, list):
        raise EtcdError("range response kvs is not a list", endpoint)
    out = []
    for kv in kvs:
        if not isinstance(kv, dict):
            raise EtcdError("range response kv is not an object", endpoint)
        out.append(KV(_unb64(kv.get("key"), "key", endpoint), _unb64(kv.get("value"), "value", endpoint),
                      _int(kv.get("mod_revision"), "mod_revision", endpoint)))  # fmt: skip
    return out


class WatchMessage(NamedTuple):
    revision: int  # the header revision: every log entry up to it has been sent
    events: list[KV]  # PUTs only, in revision order
    created: bool
    canceled: bool
    compact_revision: int  # > 0: the start revision was compacted away
    reason: str


def parse_watch_message(line: bytes, endpoint: str | None = None) -> WatchMessage:
    """One line of the gateway's /v3/watch stream: ``{"result": WatchResponse}`` or ``{"error": ...}``."""
    d = parse_response(200, line, endpoint)
    r = d.get("result")
    if not isinstance(r, dict):
        raise EtcdError("watch message without a result", endpoint)
    evs = r.get("events", [])
    if not isinstance(evs, list):
        raise EtcdError("watch events is not a list", endpoint)
    puts = []
    for ev in evs:
        if not isinstance(ev, dict):
            raise EtcdError("watch event is not an object", endpoint)
        kv = parse_kvs({"kvs": [ev.get("kv")]}, endpoint)[0]
        if ev.get("type", "PUT") == "PUT":
            puts.append(kv)
    h = r.get("header", {})
    return WatchMessage(_int(h.get("revision") if isinstance(h, dict) else None, "header.revision", endpoint), puts,
                        r.get("created") is True, r.get("canceled") is True,
                        _int(r.get("compact_revision"), "compact_revision", endpoint),
                        str(r.get("cancel_reason", ""))[:200])  # fmt: skip


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\0"
    p[-1] += 1
    return bytes(p)


# -- the gateway client --------------------------------------------------------------------------


class _Gateway:
    """POSTs JSON to the endpoints' /v3 gateway, one keep-alive connection per thread and endpoint."""

    def __init__(self, endpoints: tuple[str, ...], ssl_ctx: ssl.SSLContext | None, max_response_bytes: int,
                 request_timeout_s: float, stopped: threading.Event | None = None) -> None:  # fmt: skip
        self.stopped = stopped or threading.Event()  # set: the owner closed, calls stop retrying
        if not endpoints:
            raise EtcdError("no etcd endpoints configured")
        self.endpoints = endpoints
        self._parsed = [urlsplit(e) for e in endpoints]
        for e, u in zip(endpoints, self._parsed):
            if u.scheme not in ("http", "https") or not u.hostname or not u.port:
                raise EtcdError(f"endpoint {e!r} is not http(s)://HOST:PORT")
        self.ssl_ctx, self.max_response_bytes, self.request_timeout_s = (
            ssl_ctx,
            max_response_bytes,
            request_timeout_s,
        )
        self.current = 0
        self._local = threading.local()
        self.failovers = 0

    def connect(self, i: int, timeout_s: float) -> http.client.HTTPConnection:
        u = self._parsed[i]
        assert u.hostname is not None
        if u.scheme == "https":
            ctx = self.ssl_ctx or ssl.create_default_context()
            return http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout_s, context=ctx)
        return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)

    def _conn(self, i: int, timeout_s: float) -> http.client.HTTPConnection:
        conns: dict[int, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        c = conns.get(i)
        if c is None:
            c = conns[i] = self.connect(i, timeout_s)
        c.timeout = timeout_s
        if c.sock is not None:
            c.sock.settimeout(timeout_s)
        return c

    def _drop(self, i: int) -> None:
        c = self._local.__dict__.get("conns", {}).pop(i, None)
        if c is not None:
            c.close()

    def read_bounded(self, resp: http.client.HTTPResponse, endpoint: str) -> bytes:
        n = resp.getheader("Content-Length")
        if n is not None and n.isdigit() and int(n) > self.max_response_bytes:
            raise EtcdError(
                f"response of {n} bytes is over the {self.max_response_bytes}-byte limit", endpoint
            )
        body = resp.read(self.max_response_bytes + 1)
        if len(body) > self.max_response_bytes:
            raise EtcdError(f"response over the {self.max_response_bytes}-byte limit", endpoint)
        return body

    def call(self, path: str, req: dict, deadline: float) -> dict:
        """POST ``req`` to ``path`` on the current endpoint, failing over until ``deadline``."""
        body = json.dumps(req, separators=(",", ":")).encode()
        last: Exception | None = None
        ep: str | None = None
        tries = 0
        while True:
            if self.stopped.is_set():
                raise ClosedResourceError(f"the etcd catalog is closed ({path} not sent)")
            i = self.current
            ep = self.endpoints[i]
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                c = self._conn(i, min(left, self.request_timeout_s))
                c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                resp = c.getresponse()
                try:
                    data = self.read_bounded(resp, ep)
                except EtcdError:
                    self._drop(i)  # the unread rest would poison the keep-alive connection
                    raise
                if resp.status < 500:
                    return parse_response(resp.status, data, ep)  # an error answer raises: not retried
                try:  # 5xx (no leader, timed out, unavailable): this member cannot serve it now, try the next
                    parse_response(resp.status, data, ep)
                except EtcdError as exc:
                    last = exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop(i)
                last = exc
            tries += 1
            if len(self.endpoints) > 1:
                self.current = (i + 1) % len(self.endpoints)
                self.failovers += 1
            if tries % len(self.endpoints) == 0:  # a whole round failed: back off a little
                self.stopped.wait(min(0.05 * (1 << min(tries // len(self.endpoints), 5)),
                                      max(0.0, deadline - time.monotonic())))  # fmt: skip
        raise EtcdError(f"no etcd endpoint answered {path} in time: {last}", ep) from last


# -- the catalog backend ---------------------------------------------------------------------------------


class EtcdCatalog:
    """The daemon's catalog backend over etcd: ``start``, ``close``, ``propose``, ``catalog``, ``status``."""

    def __init__(self, endpoints: tuple[str, ...] | list[str], prefix: str = "/dwcp/default", *,
                 ca_file: str = "", cert_file: str = "", key_file: str = "",
                 max_response_bytes: int = 64 * MiB, request_timeout_s: float = 5.0, watch_idle_s: float = 60.0,
                 page_entries: int = 500, snapshot_entries: int = 10_000, snapshot_check_s: float = 30.0,
                 snapshot_chunk_bytes: int = 512 * 1024, max_snapshot_bytes: int = 1 << 30) -> None:  # fmt: skip
        ctx: ssl.SSLContext | None = None
        if ca_file or cert_file:
            ctx = ssl.create_default_context(cafile=ca_file or None)
            if cert_file:
                ctx.load_cert_chain(cert_file, key_file or None)
        self.stopped = threading.Event()
        self.gw = _Gateway(tuple(endpoints), ctx, max_response_bytes, request_timeout_s, self.stopped)
        p = prefix.rstrip("/").encode()
        self.prefix = p.decode()
        self._log = p + b"/log/"
        self._log_end = prefix_end(self._log)
        self._snap_ptr = p + b"/snapshot"
        self._snap_dir = p + b"/snap/"
        self.watch_idle_s, self.page_entries = watch_idle_s, page_entries
        self.snapshot_entries, self.snapshot_check_s = snapshot_entries, snapshot_check_s
        self.snapshot_chunk_bytes, self.max_snapshot_bytes = snapshot_chunk_bytes, max_snapshot_bytes
        self.catalog = Catalog()
        self.lock = threading.Lock()  # around the catalog, the waiters and the counters
        self.caught_up = threading.Event()  # set after the first full catch-up
        self._seen = 0  # every log entry at or below this revision has been applied (or is in the snapshot)
        self._waiters: dict[str, tuple[threading.Event, list]] = {}
        self._watch_conn: http.client.HTTPConnection | None = None
        self._threads: list[threading.Thread] = []
        self.watching = False
        self.reconnects = 0
        self.entries_applied = 0
        self.snapshots_loaded = 0
        self.snapshots_written = 0
        self.entries_trimmed = 0
        self.snapshot_revision = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [threading.Thread(target=self._applier, name="dwcp-etcd-watch", daemon=True),
                         threading.Thread(target=self._snapshotter, name="dwcp-etcd-snapshot", daemon=True)]  # fmt: skip
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stopped.set()
        c = self._watch_conn
        if c is not None and c.sock is not None:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)  # unblocks the watch read
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self.caught_up.wait(timeout_s)

    # -- applying ---------------------------------------------------------------------------------------
    def _apply(self, kvs: list[KV]) -> None:
        with self.lock:
            for kv in kvs:
                if kv.mod_revision <= self.catalog.applied_index or not kv.key.startswith(self._log):
                    continue  # already applied (a replay after a reconnect) or not ours
                res = self.catalog.apply(kv.mod_revision, kv.value)
                self.entries_applied += 1
                w = self._waiters.pop(kv.key[len(self._log) :].decode("ascii", "replace"), None)
                if w is not None:
                    w[1].append(res)
                    w[0].set()
                self._seen = max(self._seen, kv.mod_revision)

    def _load_snapshot(self, ptr: dict, deadline: float) -> bool:
        """Replace the catalog with the snapshot ``ptr`` points to; False if it vanished while read (retry)."""
        rev, d, n = int(ptr["revision"]), str(ptr["dir"]).encode(), int(ptr["chunks"])
        key, end = self._snap_dir + d + b"/", prefix_end(self._snap_dir + d + b"/")
        chunks: list[bytes] = []
        start = key
        per_page = max(1, self.gw.max_response_bytes // (2 * self.snapshot_chunk_bytes))
        while len(chunks) < n:
            got = parse_kvs(self.gw.call("/v3/kv/range", {"key": _b64(start), "range_end": _b64(end),
                                                           "limit": per_page}, deadline))  # fmt: skip
            if not got:
                return False
            chunks.extend(kv.value for kv in got)
            start = got[-1].key + b"\0"
        blob = b"".join(chunks)
        if len(chunks) != n or hashlib.sha256(blob).hexdigest() != ptr.get("sha256"):
            return False
        z = zlib.decompressobj()
        try:
            raw = z.decompress(blob, self.max_snapshot_bytes + 1)
        except zlib.error as exc:
            raise EtcdError(f"snapshot at revision {rev} is corrupt: {exc}") from None
        if len(raw) > self.max_snapshot_bytes or z.unconsumed_tail:
            raise EtcdError(f"snapshot at revision {rev} is over {self.max_snapshot_bytes} bytes")
        try:
            cat = Catalog.restore(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise EtcdError(f"snapshot at revision {rev} is not a catalog: {exc}") from None
        with self.lock:
            if rev <= self.catalog.applied_index:
                return True
            cat.applied_index = rev
            self.catalog = cat
            self._seen = max(self._seen, rev)
            self.snapshots_loaded += 1
            self.snapshot_revision = max(self.snapshot_revision, rev)
            lost = [cid for cid in self._waiters]  # proposals it covers get "unknown" from propose (rule 5)
        log.info("etcd catalog: loaded the snapshot at revision %d (%d pending proposals covered or later)", rev,
                 len(lost))  # fmt: skip
        return True

    def _read_pointer(self, d: dict) -> dict | None:
        kvs = parse_kvs(d)
        if not kvs:
            return None
        try:
            ptr = json.loads(kvs[0].value)
            int(ptr["revision"]), str(ptr["dir"]), int(ptr["chunks"])
        except (ValueError, KeyError, TypeError):
            raise EtcdError("the snapshot pointer is not valid JSON with revision, dir, chunks") from None
        ptr["_mod_revision"] = kvs[0].mod_revision
        return ptr

    def catch_up(self, deadline: float) -> int:
        """Rule 2: apply everything committed so far; returns the revision a watch continues after."""
        while True:
            after = self._seen
            txn = {"success": [
                {"request_range": {"key": _b64(self._snap_ptr)}},
                {"request_range": {"key": _b64(self._log), "range_end": _b64(self._log_end), "limit": self.page_entries,
                                   "min_mod_revision": after + 1, "sort_target": "MOD", "sort_order": "ASCEND"}},
            ]}  # fmt: skip
            d = self.gw.call("/v3/kv/txn", txn, deadline)
            rev = header_revision(d)
            resps = d.get("responses")
            if not isinstance(resps, list) or len(resps) != 2 or not all(isinstance(r, dict) for r in resps):
                raise EtcdError("txn response without its two range results")
            ptr = self._read_pointer(resps[0].get("response_range", {}))
            if ptr is not None and int(ptr["revision"]) > self.catalog.applied_index:
                self._load_snapshot(ptr, deadline)
                continue  # entries after the snapshot from there on (or the newer pointer, if it was replaced)
            page = resps[1].get("response_range", {})
            kvs = parse_kvs(page)
            self._apply(kvs)
            if page.get("more") is True and kvs:
                continue
            with self.lock:
                self._seen = max(self._seen, rev)
            return rev

    def _applier(self) -> None:
        backoff = 0.05
        while not self.stopped.is_set():
            try:
                self.catch_up(time.monotonic() + 30.0)
                self.caught_up.set()
                self._watch()
                backoff = 0.05
            except ClosedResourceError:
                return
            except (EtcdError, OSError, http.client.HTTPException) as exc:
                if self.stopped.is_set():
                    return
                self.last_error = str(exc)
                log.warning("etcd catalog: %s; reconnecting", exc)
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:  # a bug: keep the catalog applier alive, loudly
                log.exception("etcd catalog applier")
                self.stopped.wait(1.0)
            finally:
                self.watching = False
            with self.lock:
                self.reconnects += 1

    def _watch(self) -> None:
        """Rule 3: stream log entries after ``_seen`` until the stream breaks, is canceled, or we close."""
        gw = self.gw
        i = gw.current
        ep = gw.endpoints[i]
        c = gw.connect(i, self.watch_idle_s)
        self._watch_conn = c
        try:
            if self.stopped.is_set():
                return
            req = {"create_request": {"key": _b64(self._log), "range_end": _b64(self._log_end),
                                      "start_revision": self._seen + 1, "filters": ["NODELETE"]}}  # fmt: skip
            try:
                c.request(
                    "POST",
                    "/v3/watch",
                    body=json.dumps(req).encode(),
                    headers={"Content-Type": "application/json"},
                )
                resp = c.getresponse()
            except (OSError, http.client.HTTPException):
                gw.current = (i + 1) % len(gw.endpoints)  # the next catch-up starts on the next endpoint
                raise
            if resp.status != 200:
                parse_response(resp.status, gw.read_bounded(resp, ep), ep)
                raise EtcdError(f"watch answered HTTP {resp.status}", ep)
            while not self.stopped.is_set():
                line = resp.readline(gw.max_response_bytes + 1)
                if not line:
                    raise EtcdError("watch stream ended", ep)
                if len(line) > gw.max_response_bytes:
                    raise EtcdError(f"watch message over the {gw.max_response_bytes}-byte limit", ep)
                m = parse_watch_message(line, ep)
                if m.compact_revision:
                    raise EtcdError(
                        f"watch start revision {self._seen + 1} compacted (at {m.compact_revision})", ep
                    )
                if m.canceled:
                    raise EtcdError(f"watch canceled: {m.reason}", ep)
                self.watching = True
                self._apply(m.events)
        finally:
            self._watch_conn = None
            c.close()

    # -- proposing ------------------------------------------------------------------------------------------
    def propose(self, cmd: dict, timeout_s: float = 5.0) -> dict:
        """Append ``cmd`` to the log in etcd; its result once applied here (rule 5)."""
        deadline = time.monotonic() + timeout_s
        cid = secrets.token_hex(8)
        key = self._log + cid.encode()
        data = json.dumps({**cmd, "id": cid}, separators=(",", ":")).encode()
        ev, box = threading.Event(), []  # type: ignore[var-annotated]
        with self.lock:
            self._waiters[cid] = (ev, box)
        try:
            txn = {"compare": [{"key": _b64(key), "target": "CREATE", "create_revision": 0}],
                   "success": [{"request_put": {"key": _b64(key), "value": _b64(data)}}],
                   "failure": [{"request_range": {"key": _b64(key)}}]}  # fmt: skip
            d = self.gw.call("/v3/kv/txn", txn, deadline)
            if d.get("succeeded") is True:
                rev = header_revision(d)
            else:  # our own earlier attempt landed and its answer was lost
                resps = d.get("responses")
                got = parse_kvs(resps[0].get("response_range")) if isinstance(resps, list) and resps and isinstance(resps[0], dict) else []  # fmt: skip
                if not got:
                    raise EtcdError("log entry txn neither succeeded nor found the entry")
                rev = got[0].mod_revision
            while not ev.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                with self.lock:
                    if not ev.is_set() and self.catalog.applied_index >= rev:  # covered by a loaded snapshot
                        return {"ok": False, "committed": True, "revision": rev,
                                "error": "committed, but this node loaded a snapshot covering it: result unknown"}  # fmt: skip
                if time.monotonic() >= deadline:
                    raise EtcdError(f"committed at revision {rev} but not applied here within {timeout_s} s "
                                    f"(watch: {self.last_error or 'not caught up'})", self.gw.endpoints[self.gw.current])  # fmt: skip
            return box[0]
        finally:
            with self.lock:
                self._waiters.pop(cid, None)

    # -- snapshots ---------------------------------------------------------------------------------------
    def _snapshotter(self) -> None:
        while not self.stopped.wait(
            self.snapshot_check_s * random.uniform(0.75, 1.25)
        ):  # jitter: nodes do not collide
            try:
                self.snapshot(force=False)
            except ClosedResourceError:
                return
            except EtcdError as exc:
                log.warning("etcd catalog snapshot: %s", exc)

    def snapshot(self, force: bool = True, timeout_s: float = 30.0) -> int | None:
        """Rule 4.  Write a snapshot if ``force`` or ``snapshot_entries`` entries are past the current one.

        Returns the revision the new snapshot covers, or None (not needed, or another node won the swap).
        """
        deadline = time.monotonic() + timeout_s
        ptr = self._read_pointer(self.gw.call("/v3/kv/range", {"key": _b64(self._snap_ptr)}, deadline))
        old_rev = int(ptr["revision"]) if ptr else 0
        with self.lock:
            rev = self.catalog.applied_index
            if rev <= old_rev:
                return None
            if not force:
                blob = None
            else:
                blob = json.dumps(self.catalog.snapshot(), separators=(",", ":")).encode()
        if blob is None:
            cnt = self.gw.call("/v3/kv/range", {"key": _b64(self._log), "range_end": _b64(self._log_end),
                                                 "count_only": True, "max_mod_revision": rev}, deadline)  # fmt: skip
            if _int(cnt.get("count"), "count", None) < self.snapshot_entries:
                return None
            with self.lock:
                rev = self.catalog.applied_index
                blob = json.dumps(self.catalog.snapshot(), separators=(",", ":")).encode()
        z = zlib.compress(blob, 6)
        dname = f"{rev:020d}-{secrets.token_hex(4)}"
        base = self._snap_dir + dname.encode() + b"/"
        step = self.snapshot_chunk_bytes
        parts = [z[o : o + step] for o in range(0, len(z), step)] or [b""]
        for n, part in enumerate(parts):
            self.gw.call("/v3/kv/put", {"key": _b64(base + b"%06d" % n), "value": _b64(part)}, deadline)
        new = json.dumps({"revision": rev, "dir": dname, "chunks": len(parts), "bytes": len(z),
                          "sha256": hashlib.sha256(z).hexdigest()}).encode()  # fmt: skip
        swap = self.gw.call("/v3/kv/txn", {
            "compare": [{"key": _b64(self._snap_ptr), "target": "MOD", "mod_revision": ptr["_mod_revision"] if ptr else 0}],
            "success": [{"request_put": {"key": _b64(self._snap_ptr), "value": _b64(new)}}]}, deadline)  # fmt: skip
        if swap.get("succeeded") is not True:  # another node's snapshot won: ours is garbage
            self.gw.call(
                "/v3/kv/deleterange", {"key": _b64(base), "range_end": _b64(prefix_end(base))}, deadline
            )
            return None
        with self.lock:
            self.snapshots_written += 1
            self.snapshot_revision = max(self.snapshot_revision, rev)
        if ptr:
            old = self._snap_dir + str(ptr["dir"]).encode() + b"/"
            self.gw.call(
                "/v3/kv/deleterange", {"key": _b64(old), "range_end": _b64(prefix_end(old))}, deadline
            )
        trimmed = self._trim(rev, deadline)
        log.info("etcd catalog: snapshot at revision %d (%d bytes compressed), %d log entries trimmed", rev, len(z),
                 trimmed)  # fmt: skip
        return rev

    def _trim(self, rev: int, deadline: float) -> int:
        """Delete the log entries at or below ``rev`` (they are in the snapshot), 100 per txn."""
        total = 0
        while True:
            d = self.gw.call("/v3/kv/range", {"key": _b64(self._log), "range_end": _b64(self._log_end), "keys_only": True,
                                               "max_mod_revision": rev, "limit": 1000}, deadline)  # fmt: skip
            keys = [kv.key for kv in parse_kvs(d)]
            if not keys:
                break
            for o in range(0, len(keys), 100):  # etcd's --max-txn-ops is 128 by default
                self.gw.call("/v3/kv/txn", {"success": [{"request_delete_range": {"key": _b64(k)}} for k in keys[o:o + 100]]},
                             deadline)  # fmt: skip
            total += len(keys)
        with self.lock:
            self.entries_trimmed += total
        return total

    # -- status -----------------------------------------------------------------------------------------------
    def status(self) -> dict:
        with self.lock:
            return {"backend": "etcd", "endpoint": self.gw.endpoints[self.gw.current], "prefix": self.prefix,
                    "applied_revision": self.catalog.applied_index, "seen_revision": self._seen,
                    "watching": self.watching, "caught_up": self.caught_up.is_set(), "reconnects": self.reconnects,
                    "failovers": self.gw.failovers, "entries_applied": self.entries_applied,
                    "snapshot_revision": self.snapshot_revision, "snapshots_loaded": self.snapshots_loaded,
                    "snapshots_written": self.snapshots_written, "entries_trimmed": self.entries_trimmed,
                    "last_error": self.last_error}  # fmt: skip
