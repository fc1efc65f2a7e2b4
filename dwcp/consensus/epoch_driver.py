"""The daemon's driver for adaptive consensus: an ``EpochNode`` (Raft or PBFT epochs) on the data port.

The same surface as ``RaftDriver`` (``start``, ``close``, ``propose``,
``catalog``, ``lock``, ``status``, ``deliver``), used when
``consensus.algorithm = "bft"`` or ``consensus.adaptive = true``:

* the wire: the data port's consensus streams (HELLO op "raft", mutual TLS),
  one FRAME_RAFT frame per envelope, ``{"type": "epoch", "epoch", "src",
  "dst", "kind", "body"|"data"|"want"}``; an engine message travels in its
  engine's wire form (``raft_to_wire`` for Raft, ``Msg.to_wire`` for PBFT);
  ``dwcp.consensus.wire`` checks every envelope, and keeps an engine message
  only when it belongs to an epoch this node runs;
* identity: with TLS, an envelope's ``src`` must be the certificate's node
  id (and a PBFT message is signed besides); in plaintext (tests only) the
  envelope's ``src`` is taken as the peer;
* durability: each Raft epoch keeps its log in ``consensus/epoch-N/raft``
  (fsynced, as ``RaftDriver``); the epoch host's own state -- the current
  epoch, its algorithm and the catalog as it stood at the epoch's start --
  is written atomically to ``consensus/epoch.json`` at every switch, so a
  restarted node resumes in its epoch and replays that epoch's log: Raft's
  from ``epoch-N/raft``, PBFT's executed entries and signed votes from
  ``epoch-N/pbft`` (so it never contradicts what it signed), then catches
  up what it missed from its peers (Raft replication; PBFT FETCH/ENTRIES,
  or a state transfer when an epoch went by);
* BFT keys: this node signs with its Ed25519 key (``consensus.bft_key_file``),
  and verifies with the ``bft_key`` each [[cluster.peers]] entry gives;
* adaptive mode (``adaptive``: the [consensus] adaptive settings, or None):
  every envelope is signed with that key and checked (``adaptive.py``: Raft
  epochs get signatures too), a fault detector counts evidence of Byzantine
  behaviour per peer in every epoch (a forged ``src`` is still refused, and
  now counted against the TLS identity), and the switch policy proposes
  raft -> bft on evidence and bft -> raft after a quiet period, as committed
  switch commands with their ``reason``; ``status()["adaptive"]`` reports it;
* TEST ONLY: with adaptive mode, the environment variable
  ``DWCP_TEST_BYZANTINE=badsig|equivocate|forge`` (read once, here, at start,
  and logged as an error) makes this node Byzantine (``byzantine.py``), so
  that tests can watch a real cluster react.  Never set it in production.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from dwcp.durable import write_atomic
from dwcp.errors import DWCPError, RemoteProtocolError, StorageError
from dwcp.transport.dialer import Dialer
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

from .adaptive import Adaptive, AdaptiveSettings
from .byzantine import ENV_VAR as BYZANTINE_ENV
from .byzantine import ByzantineHook
from .catalog import Catalog
from .driver import _PeerLink
from .epochs import ALGORITHMS, EpochNode, PbftEngine, RaftEngine
from .raft import NotLeaderError, RaftNode
from .storage import FileStorage
from .wire import epoch_from_wire, epoch_to_wire

__all__ = ["EpochDriver"]

log = logging.getLogger("dwcp.consensus")


class EpochDriver:
    def __init__(self, node_id: str, peers: dict[str, str], data_dir: str, *, dialer: Dialer,
                 algorithm: str = "raft", signer=None, verify_keys: dict | None = None, tick_s: float = 0.05,
                 election_ticks: int = 10, adaptive: AdaptiveSettings | None = None) -> None:  # fmt: skip
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r}: one of {ALGORITHMS}")
        self.id = node_id
        self.ids = sorted({node_id, *peers})
        self.dialer, self.tick_s = dialer, tick_s
        self.election_ticks = election_ticks
        self.signer, self.verify_keys = signer, dict(verify_keys or {})
        self.dir = os.path.join(data_dir, "consensus")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._storages: list[
            Any
        ] = []  # FileStorage (Raft epochs), FilePbftStorage (PBFT): sync() and close()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.failed: BaseException | None = None
        self.links = {p: _PeerLink(self, p, a) for p, a in peers.items()}
        self._waiters: dict[str, tuple[threading.Event, list]] = {}
        self._seq = 0
        self._prefix = os.urandom(4).hex()
        saved = self._load()
        self.node = EpochNode(node_id, self.ids, self._make_engine, algorithm=saved["algorithm"] if saved else algorithm,
                              epoch=int(saved["epoch"]) if saved else 0)  # fmt: skip
        if saved:
            self._restore(saved)
        self._saved_epoch = self.node.epoch
        self.adaptive: Adaptive | None = None
        self._logged_evidence: tuple[int, float] = (0, -1e18)  # (events logged up to, when we last logged)
        if adaptive is not None:
            # the test hook is the one environment variable read below the config (STYLE 22), once, here
            mode = os.environ.get(BYZANTINE_ENV, "")
            hook = ByzantineHook(mode, node_id, self.ids, signer) if mode else None
            if hook is not None:
                log.error("consensus: TEST HOOK %s=%s: this node %s is BYZANTINE on purpose (tests only)",
                          BYZANTINE_ENV, mode, node_id)  # fmt: skip
            self.adaptive = Adaptive(node_id, self.ids, adaptive, signer=signer, verify_keys=self.verify_keys,
                                     byzantine=hook, algorithm=self.node.algorithm, now=time.monotonic())  # fmt: skip
            if not self.adaptive.signing:
                log.warning("consensus: adaptive mode without every node's bft_key: envelopes are not signed, "
                            "and no automatic switch to bft is possible")  # fmt: skip

    # -- engines and the epoch file ------------------------------------------------------
    def _make_engine(self, algorithm: str, epoch: int):
        if algorithm == "bft":
            from .pbft import PbftNode

            self._check_bft_keys()
            from .pbft_storage import FilePbftStorage

            # durable votes, view and executed entries: a restarted node never contradicts what it signed, and
            # re-emits its executed entries, which rebuild the catalog from the epoch's start
            pst = FilePbftStorage(os.path.join(self.dir, f"epoch-{epoch}", "pbft"))
            self._storages.append(pst)  # synced in _drain, closed in close()
            return PbftEngine(PbftNode(self.id, self.ids, self.signer, self.verify_keys, storage=pst))
        st = FileStorage(os.path.join(self.dir, f"epoch-{epoch}", "raft"))
        self._storages.append(st)
        return RaftEngine(RaftNode(self.id, self.ids, st, election_ticks=self.election_ticks))

    @property
    def _epoch_file(self) -> str:
        return os.path.join(self.dir, "epoch.json")

    def _load(self) -> dict | None:
        try:
            with open(self._epoch_file, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StorageError(f"{self._epoch_file}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("algorithm") not in ALGORITHMS:
            raise StorageError(f"{self._epoch_file}: not an epoch record")
        return doc

    def _restore(self, st: dict) -> None:
        """Back in the saved epoch: the catalog as it stood at its start; the engine replays the rest."""
        n = self.node
        n.previous_algorithm = str(st["previous"])
        n.catalog = Catalog.restore(json.loads(st["catalog"]))
        n.gidx = int(st["gidx"])
        n.last_switch_gidx = n.gidx  # the epoch started at a switch command
        n._ids.clear()
        n._ids.update((i, None) for i in st["ids"])
        n.start_state = (n.gidx, n._snap(), n.algorithm, list(st["ids"]))
        log.info("consensus: resuming epoch %d (%s) from global index %d", n.epoch, n.algorithm, n.gidx)

    def _save(self) -> None:
        """The epoch's start, durable before anything of the new epoch is sent (called with the lock held)."""
        n = self.node
        gidx, snap, alg, ids = n.start_state
        doc = {"epoch": n.epoch, "algorithm": alg, "previous": n.previous_algorithm, "gidx": gidx,
               "catalog": snap.decode(), "ids": ids}  # fmt: skip
        write_atomic(self._epoch_file, json.dumps(doc, separators=(",", ":")))
        self._saved_epoch = n.epoch
        log.info("consensus: epoch %d runs %s from global index %d", n.epoch, alg, gidx)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        for link in self.links.values():
            link.start()
        threading.Thread(target=self._ticker, name="dwcp-consensus-tick", daemon=True).start()

    def close(self) -> None:
        self.stopped.set()
        with self.lock:
            for st in self._storages:
                st.close()

    def _ticker(self) -> None:
        while not self.stopped.wait(self.tick_s):
            with self.lock:
                try:
                    self.node.tick()
                    self._drain()
                    self._auto_switch()
                except DWCPError as exc:  # an engine in ERROR (sticky), a disk failure: stop, loudly
                    self.failed = exc
                    log.error("consensus on %s stops: %s", self.id, exc)
                    self.stopped.set()

    @property
    def catalog(self) -> Catalog:
        return self.node.catalog

    # -- the wire -------------------------------------------------------------------------------
    def _algorithm_of(self, epoch: int) -> str | None:
        return self.node.algorithm_of(epoch)

    def deliver(self, d: dict, peer_identity: str | None) -> None:
        """An envelope from the data port; ``peer_identity`` is the TLS identity (None: plaintext)."""
        if self.adaptive is not None:
            with self.lock:
                try:  # checked, signature included, and watched; what is refused or dropped is also counted
                    e = self.adaptive.incoming(d, peer_identity, time.monotonic(), self._algorithm_of)
                finally:
                    self._log_evidence()
                if e is not None:
                    self.node.step(e)
                    self._drain()
            return
        if d.get("type") != "epoch":
            raise RemoteProtocolError(
                "this node runs adaptive consensus: epoch envelopes only", C.ERR_BAD_FIELD
            )
        with self.lock:
            e = epoch_from_wire(d, self._algorithm_of)
            if peer_identity is not None and e.src != peer_identity:
                raise RemoteProtocolError(f"consensus envelope from {peer_identity} claims to be from {e.src}",
                                          C.ERR_BAD_FIELD)  # fmt: skip
            if e.dst != self.id or e.src not in self.links:
                raise RemoteProtocolError(
                    f"envelope {e.src} -> {e.dst} is not for this cluster node", C.ERR_BAD_FIELD
                )
            self.node.step(e)  # an engine message of an epoch we do not run only moves the epoch bookkeeping
            self._drain()

    def _drain(self) -> None:
        r = self.node.ready()
        for st in self._storages[-2:]:  # durable before anything is handed to the links (their threads send)
            st.sync()
        if self.node.epoch != self._saved_epoch:
            self._save()
        a = self.adaptive
        for e in r.messages:
            link = self.links.get(e.dst)
            if link is None:
                continue
            for d in a.outgoing(e, self.node) if a is not None else (epoch_to_wire(e),):
                link.send(encode_control(C.FRAME_RAFT, 0, d))
        for _gidx, cmd, res in r.applied:
            w = self._waiters.pop(cmd.get("id", ""), None)
            if w is not None:
                w[1].append(res)
                w[0].set()
            if cmd.get("op") == "switch" and res.get("ok") and cmd.get("reason"):
                log.warning("consensus: switched to %s in epoch %s (%s): %s", cmd.get("algorithm"), res.get("epoch"),
                            cmd.get("cause"), cmd.get("reason"))  # fmt: skip
        if a is not None:
            a.after_ready(self.node, r.applied, time.monotonic(), time.time())
            self._log_evidence()

    def _auto_switch(self) -> None:
        """Adaptive mode: propose the switch the policy asks for (called with the lock held, each tick)."""
        if self.adaptive is None:
            return
        cmd = self.adaptive.poll(self.node, time.monotonic(), self._new_id)
        if cmd is None:
            return
        log.warning("consensus: %s proposes switching to %s (epoch %d runs %s; %s): %s", self.id, cmd["algorithm"],
                    self.node.epoch, self.node.algorithm, cmd["cause"], cmd["reason"])  # fmt: skip
        self.node.propose(cmd)
        self._drain()

    def _log_evidence(self) -> None:
        """Log new evidence: at once the first time, then at most one line per 10 s (called with the lock held)."""
        det = self.adaptive.detector if self.adaptive is not None else None
        if det is None or not det.events:
            return
        seen, last = self._logged_evidence
        total = sum(n for by in det.counts.values() for n in by.values())
        now = time.monotonic()
        if total == seen or (seen and now - last < 10.0):
            return
        ev = det.events[-1]
        log.warning("consensus: evidence of Byzantine behaviour: %s %s (%s); %d event(s) so far, by peer: %s",
                    ev.peer, ev.kind, ev.detail, total, det.counts)  # fmt: skip
        self._logged_evidence = (total, now)

    def _new_id(self) -> str:
        self._seq += 1
        return f"{self.id}:{self._prefix}:{self._seq}"

    # -- proposing --------------------------------------------------------------------------------
    def propose(self, cmd: dict, timeout_s: float = 5.0) -> dict:
        """Apply ``cmd`` to the catalog through the current epoch's consensus; its result once applied here."""
        ev, box = threading.Event(), []  # type: ignore[var-annotated]
        with self.lock:
            cid = self._new_id()
            self._waiters[cid] = (ev, box)
            self.node.propose({**cmd, "id": cid})
            self._drain()
        if not ev.wait(timeout_s):
            with self.lock:
                self._waiters.pop(cid, None)
                self.node._pending.pop(cid, None)
            raise NotLeaderError(f"no quorum applied the command within {timeout_s} s", None)
        return box[0]

    def switch(self, algorithm: str, timeout_s: float = 10.0) -> dict:
        """Switch the cluster's algorithm by a committed command (adaptive mode)."""
        if algorithm not in ALGORITHMS:
            raise DWCPError(f"algorithm {algorithm!r}: one of {', '.join(ALGORITHMS)}")
        if algorithm == "bft":
            self._check_bft_keys()
        return self.propose({"op": "switch", "algorithm": algorithm}, timeout_s=timeout_s)

    def _check_bft_keys(self) -> None:
        """BFT needs this node's signing key and every node's bft_key (before a switch is even proposed)."""
        if self.signer is None or set(self.verify_keys) < set(self.ids):
            missing = sorted(set(self.ids) - set(self.verify_keys))
            raise DWCPError(f"BFT consensus needs this node's signing key and every node's bft_key (missing: "
                            f"{', '.join(missing) or 'our signing key'})")  # fmt: skip

    def faults(self) -> dict[str, dict[str, int]]:
        """PBFT fault counters of the current (or retired) BFT engine: kind -> node -> count."""
        out: dict[str, dict[str, int]] = {}
        for eng in (self.node.engine, self.node.retired):
            node = getattr(eng, "node", None)
            for kind, by in (getattr(node, "faults", None) or {}).items():
                for who, n in by.items():
                    out.setdefault(kind, {})[who] = out.get(kind, {}).get(who, 0) + n
        return out

    def status(self) -> dict:
        with self.lock:
            n = self.node
            eng = getattr(n.engine, "node", None)
            st: dict[str, Any] = {"epoch": n.epoch, "algorithm": n.algorithm, "applied": n.gidx,
                                  "switches": n.switches, "pending": len(n._pending)}  # fmt: skip
            if n.algorithm == "raft" and eng is not None:
                st.update(role=eng.role.value, term=eng.term, leader=eng.leader, commit=eng.commit)
            elif eng is not None:
                st.update(view=eng.view, primary=eng.primary(), status=eng.status.value, last_executed=eng.last_exec,
                          f=eng.f)  # fmt: skip
            st["faults"] = self.faults()
            if self.adaptive is not None:
                st["adaptive"] = self.adaptive.status(time.monotonic())
            st["failed"] = None if self.failed is None else str(self.failed)
            st["at"] = time.time()
            return st
