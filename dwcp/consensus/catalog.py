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
  of transfers ever made);
* ``{"op": "drop", "key", "digest", "holder"}`` -- a holder pruned it;
* ``{"op": "lease", "key", "holder", "until"}`` / ``{"op": "release", "key", "holder"}``
  -- one writer per key (a lease held by another holder and not expired at
  ``at`` is refused: the result says so).

Bad commands are refused deterministically (the same on every node), never
raised: a result dict with ``ok`` False.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["Catalog", "MAX_KEY_VERSIONS"]

MAX_KEY_VERSIONS = 64


class Catalog:
    def __init__(self) -> None:
        self.keys: dict[
            str, list[dict[str, Any]]
        ] = {}  # key -> [{"version", "digest", "size", "holders", "at"}]
        self.leases: dict[str, dict[str, Any]] = {}
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
                return self._version(str(cmd["key"]), str(cmd["digest"]), int(cmd["size"]), str(cmd["holder"]),
                                     float(cmd.get("at", 0.0)))  # fmt: skip
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

    def _version(self, key: str, digest: str, size: int, holder: str, at: float) -> dict:
        vs = self.keys.setdefault(key, [])
        for v in vs:
            if v["digest"] == digest:
                if holder not in v["holders"]:
                    v["holders"].append(holder)
                return {"ok": True, "version": v["version"]}
        v = {"version": (vs[-1]["version"] + 1) if vs else 1, "digest": digest, "size": size, "holders": [holder],
             "at": at}  # fmt: skip
        vs.append(v)
        if len(vs) > MAX_KEY_VERSIONS:
            del vs[: len(vs) - MAX_KEY_VERSIONS]
        return {"ok": True, "version": v["version"]}

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
        return {"keys": self.keys, "leases": self.leases, "applied_index": self.applied_index}

    @classmethod
    def restore(cls, snap: dict) -> Catalog:
        c = cls()
        c.keys, c.leases, c.applied_index = snap["keys"], snap["leases"], snap["applied_index"]
        return c
