"""The cluster catalog: key -> versions -> digest -> holders, and transfer leases.

A deterministic state machine: ``apply(command)`` for each committed entry,
in log order, on every node, gives every node the same catalog.  Commands
are JSON objects:

* ``{"op": "version", "key", "digest", "size", "holder", "at"}`` -- ``holder``
  verified and stored version ``digest`` of ``key``; versions of a key are
  numbered in commit order (a digest seen again just gains a holder); a key
  keeps its last ``MAX_KEY_VERSIONS`` (a node stores its last
  ``storage.keep_versions``, at least 2: older entries describe files long
  pruned, and would make every snapshot of the catalog grow with the number
  of transfers ever made).  A write that knows what it replaces adds
  ``"writer"`` (the node that wrote it), ``"hlc"`` (its hybrid logical clock
  reading, dwcp.cluster.hlc), ``"parent"`` (the digest of the key's latest
  version as the writer saw it; "" for none) and ``"policy"`` (the writer's
  ``cluster.conflicts``).  When ``parent`` is not the key's latest version
  here, the write was concurrent with another (two writers, say, on either
  side of a partition) and ``policy`` decides, the same on every node:
  ``"lww"`` -- both versions are kept and the one with the higher
  (hlc, digest) is the latest; ``"reject"`` -- the first committed stays
  the latest and this one is refused (the result says so; its holders keep
  it aside).  Either way the conflict is recorded in ``conflicts[key]``
  (its last ``MAX_KEY_CONFLICTS``), never silently lost;
* ``{"op": "drop", "key", "digest", "holder"}`` -- a holder pruned it;
* ``{"op": "member", "action": "add" | "remove", "node", "address", "region"}``
  -- the cluster's membership beyond the nodes' configs (``dwcp cluster
  add|remove``): ``members`` maps each node ever added or removed to its
  last record; ``membership(bootstrap)`` is the configured peers with these
  applied.  The Raft driver follows it: peer links, and its leader changes
  the voters one node at a time to match;
* ``{"op": "lease", "key", "holder", "until"}`` / ``{"op": "release", "key", "holder"}``
  -- one writer per key (a lease held by another holder and not expired at
  ``at`` is refused: the result says so).

Bad commands are refused deterministically (the same on every node), never
raised: a result dict with ``ok`` False.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["Catalog", "MAX_KEY_VERSIONS", "MAX_KEY_CONFLICTS", "CONFLICT_POLICIES"]

MAX_KEY_VERSIONS = 64
MAX_KEY_CONFLICTS = 64
CONFLICT_POLICIES = ("lww", "reject")


class Catalog:
    def __init__(self) -> None:
        self.keys: dict[
            str, list[dict[str, Any]]
        ] = {}  # key -> [{"version", "digest", "size", "holders", "at"}]
        self.leases: dict[str, dict[str, Any]] = {}
        # key -> [{"digest", "version", "writer", "hlc", "parent", "latest", "policy", "outcome", "holders", ...}]
        self.conflicts: dict[str, list[dict[str, Any]]] = {}
        self.conflicts_total = 0
        self.members: dict[str, dict[str, Any]] = {}  # node id -> {"action", "address", "region", "at"}
        self.members_rev = 0  # counts membership changes applied (the driver's cue to follow them)
        self.applied_index = 0

    def apply(self, index: int, data: bytes) -> dict:
        self.applied_index = index
        try:
            cmd = json.loads(data)
            op = cmd["op"]
        except (ValueError, KeyError, TypeError, RecursionError):  # deep nesting: RecursionError, not a crash
            return {"ok": False, "error": "malformed command"}
        try:
            if op == "version":
                parent = cmd.get("parent")
                policy = str(cmd.get("policy", "lww"))
                if policy not in CONFLICT_POLICIES:
                    return {"ok": False, "error": f"unknown conflict policy {policy[:32]!r}"}
                return self._version(str(cmd["key"]), str(cmd["digest"]), int(cmd["size"]), str(cmd["holder"]),
                                     float(cmd.get("at", 0.0)), writer=str(cmd.get("writer", "")),
                                     hlc=int(cmd.get("hlc", 0)), parent=None if parent is None else str(parent),
                                     policy=policy)  # fmt: skip
            if op == "member":
                return self._member(str(cmd["action"]), str(cmd["node"]), str(cmd.get("address", "")),
                                    str(cmd.get("region", "")), float(cmd.get("at", 0.0)))  # fmt: skip
            if op == "drop":
                return self._drop(str(cmd["key"]), str(cmd["digest"]), str(cmd["holder"]))
            if op == "lease":
                return self._lease(
                    str(cmd["key"]), str(cmd["holder"]), float(cmd["until"]), float(cmd.get("at", 0.0))
                )
            if op == "release":
                lease = self.leases.get(str(cmd["key"]))
                if lease and lease["holder"] == cmd["holder"]:
                    del self.leases[str(cmd["key"])]
                return {"ok": True}
        except (KeyError, TypeError, ValueError, RecursionError):
            return {"ok": False, "error": f"malformed {op} command"}
        return {"ok": False, "error": f"unknown op {str(op)[:64]!r}" if isinstance(op, str) else "unknown op"}

    def _version(self, key: str, digest: str, size: int, holder: str, at: float, *, writer: str = "", hlc: int = 0,
                 parent: str | None = None, policy: str = "lww") -> dict:  # fmt: skip
        vs = self.keys.setdefault(key, [])
        for v in vs:
            if v["digest"] == digest:
                if holder not in v["holders"]:
                    v["holders"].append(holder)
                return {"ok": True, "version": v["version"]}
        for c in self.conflicts.get(key, []):
            if c["digest"] == digest and c["outcome"] == "rejected":  # another home of a refused write
                if holder not in c["holders"]:
                    c["holders"].append(holder)
                return {"ok": False, "conflict": True, "version": c["version"], "error": c["error"]}
        number = 1 + max(
            [v["version"] for v in vs] + [c["version"] for c in self.conflicts.get(key, [])], default=0
        )
        v = {"version": number, "digest": digest, "size": size, "holders": [holder], "at": at}
        if writer or hlc or parent is not None:
            v.update(writer=writer, hlc=hlc, parent=parent)
        latest = vs[-1] if vs else None
        if (
            parent is None
            or (latest is None and parent == "")
            or (latest is not None and parent == latest["digest"])
        ):
            vs.append(v)  # not concurrent (or the writer did not say what it replaced): the new latest
            if len(vs) > MAX_KEY_VERSIONS:
                del vs[: len(vs) - MAX_KEY_VERSIONS]
            return {"ok": True, "version": number}
        # concurrent: the writer replaced `parent`, but the latest here is another version (or none, if
        # the key's versions were trimmed away)
        was = latest["digest"] if latest is not None else ""
        by = str(latest.get("writer", "")) if latest else ""
        rec: dict[str, Any] = {"digest": digest, "version": number, "size": size, "writer": writer, "hlc": hlc, "parent": parent,
               "latest": was, "latest_writer": by,
               "latest_hlc": latest.get("hlc", 0) if latest else 0, "policy": policy, "at": at}  # fmt: skip
        self.conflicts_total += 1
        if policy == "reject":
            rec.update(outcome="rejected", holders=[holder], error=(
                f"conflict on {key!r}: version {digest} by {writer or '?'} replaces {parent or 'nothing'}, but "
                f"the latest is {was or 'none'}{' by ' + by if by else ''}; "
                "cluster.conflicts = reject: the first committed wins (fetch the latest and write again)"))  # fmt: skip
            self._note(key, rec)
            return {"ok": False, "conflict": True, "version": number, "error": rec["error"]}
        wins = latest is None or (hlc, digest) > (latest.get("hlc", 0), latest["digest"])
        if wins:
            vs.append(v)
        else:
            vs.insert(len(vs) - 1, v)  # kept, listed, but the latest stays: it is the later write
        if len(vs) > MAX_KEY_VERSIONS:
            del vs[: len(vs) - MAX_KEY_VERSIONS]
        rec["outcome"] = "won" if wins else "lost"
        self._note(key, rec)
        return {"ok": True, "version": number, "conflict": True, "latest": vs[-1]["digest"]}

    def _note(self, key: str, rec: dict) -> None:
        cs = self.conflicts.setdefault(key, [])
        cs.append(rec)
        if len(cs) > MAX_KEY_CONFLICTS:
            del cs[: len(cs) - MAX_KEY_CONFLICTS]

    def _member(self, action: str, node: str, address: str, region: str, at: float) -> dict:
        if action not in ("add", "remove"):
            return {"ok": False, "error": f"member action {action[:16]!r}: add or remove"}
        if not 0 < len(node) <= 128 or not node.isprintable():
            return {"ok": False, "error": "member node: an id of 1..128 printable characters"}
        host, sep, port = address.rpartition(":")
        if action == "add" and (not sep or not host or not port.isdigit() or not 0 < int(port) < 65536):
            return {"ok": False, "error": f"member address {address[:64]!r} is not HOST:PORT"}
        self.members[node] = {"action": action, "address": address, "region": region[:64], "at": at}
        self.members_rev += 1
        return {"ok": True, "members_rev": self.members_rev}

    def membership(self, bootstrap: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        """The cluster's nodes: ``bootstrap`` (id -> {"address", "region"}, the configured peers and the
        node itself) with every ``member`` record applied, the latest record of a node winning."""
        out = {k: dict(v) for k, v in bootstrap.items()}
        for node, m in self.members.items():
            if m["action"] == "remove":
                out.pop(node, None)
            else:
                out[node] = {
                    "address": m["address"],
                    "region": m["region"] or out.get(node, {}).get("region", ""),
                }
        return out

    def _drop(self, key: str, digest: str, holder: str) -> dict:
        for v in self.keys.get(key, []):
            if v["digest"] == digest and holder in v["holders"]:
                v["holders"].remove(holder)
        return {"ok": True}

    def _lease(self, key: str, holder: str, until: float, at: float) -> dict:
        cur = self.leases.get(key)
        if cur and cur["holder"] != holder and cur["until"] > at:
            return {"ok": False, "error": f"{key} is leased to {cur['holder']} until {cur['until']}"}
        self.leases[key] = {"holder": holder, "until": until}
        return {"ok": True}

    # -- reading -----------------------------------------------------------------
    def latest(self, key: str) -> dict | None:
        vs = self.keys.get(key)
        return dict(vs[-1], key=key) if vs else None

    def where(self) -> dict[str, dict]:
        """Every key's latest version and who holds it (what `dwcp status` shows)."""
        return {k: {"version": vs[-1]["version"], "digest": vs[-1]["digest"], "holders": sorted(vs[-1]["holders"])}
                for k, vs in sorted(self.keys.items()) if vs}  # fmt: skip

    def history(self, key: str) -> dict[str, Any]:
        """``key``'s versions (oldest first, the latest last) and the conflicts recorded on it."""
        return {"versions": self.versions(key),
                "conflicts": [dict(c, holders=sorted(c.get("holders", []))) for c in self.conflicts.get(key, [])]}  # fmt: skip

    def versions(self, key: str) -> list[dict[str, Any]]:
        """``key``'s versions the catalog still lists, oldest first: {version, digest, size, holders, at}."""
        return [{**v, "holders": sorted(v["holders"])} for v in self.keys.get(key, [])]

    def replica_versions(self) -> dict[str, list[tuple[str, int, float]]]:
        """Per key, each holder's newest version: [(holder, version, made_at)] (for the baseline-sync check)."""
        out: dict[str, list[tuple[str, int, float]]] = {}
        for k, vs in self.keys.items():
            newest: dict[str, tuple[int, float]] = {}
            for v in vs:
                for h in v["holders"]:
                    if h not in newest or v["version"] > newest[h][0]:
                        newest[h] = (v["version"], v["at"])
            out[k] = [(h, ver, at) for h, (ver, at) in sorted(newest.items())]
        return out

    def snapshot(self) -> dict:
        return {"keys": self.keys, "leases": self.leases, "applied_index": self.applied_index,
                "conflicts": self.conflicts, "conflicts_total": self.conflicts_total, "members": self.members,
                "members_rev": self.members_rev}  # fmt: skip

    @classmethod
    def restore(cls, snap: dict) -> Catalog:
        c = cls()
        c.keys, c.leases, c.applied_index = snap["keys"], snap["leases"], snap["applied_index"]
        c.conflicts, c.conflicts_total = snap.get("conflicts", {}), int(snap.get("conflicts_total", 0))
        c.members, c.members_rev = snap.get("members", {}), int(snap.get("members_rev", 0))
        return c
