"""`dwcp ls | rm | gc | du`: what a node stores, for an operator (through the daemon's control API).

Two stores live in a data directory: the receiver's (``objects/``: every key's verified versions,
``partial/``: transfers not finished yet) and the sender's baselines (``sent/``: the version last sent
to each peer, the next delta's base).  Beside them: ``quarantine/`` (versions the scrub found rotten)
and ``conflicts/`` (writes the catalog refused).

* ``listing``: keys under a prefix, each with its versions (digest, size, latest, when stored) and,
  where the node keeps a catalog, the holders of its latest version;
* ``remove``: a key's versions (or one, by digest) from the receiver's store; the catalog is then
  told this node no longer holds them (the caller proposes the drops);
* ``collect``: garbage -- partials untouched for ``storage.partial_max_age_s`` (an abandoned
  transfer's, never resumed), baselines in ``sent/`` and files in ``quarantine/`` and ``conflicts/``
  older than that too;
* ``usage``: bytes and files of each of those.

Rules: nothing here removes a version another transfer holds the lease of (``KeyBusyError``), and
nothing outside the data directory is touched.
"""

from __future__ import annotations

import os
import time
from typing import Any

from dwcp.storage import ObjectStore

__all__ = ["listing", "remove", "collect", "usage", "AREAS"]

AREAS = ("objects", "partial", "sent", "quarantine", "conflicts")


def listing(store: ObjectStore, prefix: str = "", holders: dict[str, list[str]] | None = None) -> list[dict]:
    """Every key of ``store`` under ``prefix``: its versions (latest first) and its latest's holders."""
    out = []
    for key in store.keys():
        if not key.startswith(prefix):
            continue
        latest = store.latest(key)
        vs = []
        for v in store.versions(key):
            try:
                mtime = os.stat(v.path).st_mtime
            except FileNotFoundError:
                continue
            vs.append({"digest": v.digest.hex(), "size": v.size, "stored_at": mtime,
                       "latest": latest is not None and v.digest == latest.digest})  # fmt: skip
        if vs:
            out.append({"key": key, "versions": vs, "holders": (holders or {}).get(key)})
    return out


def remove(store: ObjectStore, key: str, digest: str | None = None) -> list[str]:
    """Remove ``key``'s versions (only ``digest``'s, if given) from ``store``; the digests removed."""
    gone = []
    for v in store.versions(key):
        if digest is not None and v.digest.hex() != digest:
            continue
        if store.remove_version(v):
            gone.append(v.digest.hex())
    return gone


def _old_files(d: str, max_age_s: float, now: float) -> list[str]:
    found = []
    for root, _dirs, files in os.walk(d):
        for n in files:
            p = os.path.join(root, n)
            try:
                if now - os.stat(p).st_mtime > max_age_s:
                    found.append(p)
            except FileNotFoundError:
                continue
    return found


def collect(store: ObjectStore, sent: ObjectStore, max_age_s: float, now: float | None = None,
            *, dry_run: bool = False) -> dict[str, list[str]]:  # fmt: skip
    """Garbage older than ``max_age_s`` (module docstring), removed unless ``dry_run``: what, by area."""
    now = time.time() if now is None else now
    out: dict[str, list[str]] = {"partial": [], "sent": [], "quarantine": [], "conflicts": []}
    if dry_run:
        out["partial"] = [p for p in _old_files(os.path.join(store.data_dir, "partial"), max_age_s, now)
                          if p.endswith(".state")]  # fmt: skip
    else:
        out["partial"] = store.gc_partials(max_age_s, now)
    for key in sent.keys():
        for v in sent.versions(key):
            try:
                old = now - os.stat(v.path).st_mtime > max_age_s
            except FileNotFoundError:
                continue
            if old and (dry_run or sent.remove_version(v)):
                out["sent"].append(f"{key}@{v.digest.hex()}")
    for area in ("quarantine", "conflicts"):
        for p in _old_files(os.path.join(store.data_dir, area), max_age_s, now):
            if not dry_run:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    continue
            out[area].append(p)
    return out


def usage(data_dir: str) -> dict[str, Any]:
    """Bytes (apparent and allocated) and files of each area of ``data_dir``."""
    out: dict[str, Any] = {}
    for area in AREAS:
        n = size = blocks = 0
        for root, _dirs, files in os.walk(os.path.join(data_dir, area)):
            for f in files:
                try:
                    st = os.stat(os.path.join(root, f))
                except FileNotFoundError:
                    continue
                n, size, blocks = n + 1, size + st.st_size, blocks + st.st_blocks * 512
        out[area] = {"files": n, "bytes": size, "allocated_bytes": blocks}
    out["total_bytes"] = sum(a["bytes"] for a in out.values() if isinstance(a, dict))
    return out


def handle(req: dict, *, store: ObjectStore, sent: ObjectStore, max_age_s: float,
           holders: dict[str, list[str]] | None = None, drop=None) -> dict:  # fmt: skip
    """One store request (ops ``ls``, ``rm``, ``gc``, ``du``), as the daemon's control API and the CLI
    (when no daemon runs) both answer it.  ``sent``: act on the sender's baselines instead of the
    receiver's store (ls, rm); ``drop(key, digest)``: tell the catalog a version is gone (rm)."""
    from dwcp.errors import ConfigError
    from dwcp.storage import validate_key

    op = req.get("op")
    which = sent if req.get("sent") else store
    if op == "ls":
        return {"ok": True, "store": "sent" if req.get("sent") else "objects",
                "keys": listing(which, str(req.get("prefix", "")), None if req.get("sent") else holders)}  # fmt: skip
    if op == "rm":
        key = validate_key(str(req.get("key", "")))
        version = req.get("version")
        gone = remove(which, key, str(version) if version is not None else None)
        if not gone:
            raise ConfigError(f"{key}: no {'version ' + str(version) if version else 'version'} of it is stored "
                              f"{'among the sent baselines' if req.get('sent') else 'here'} (dwcp ls {key})")  # fmt: skip
        if drop is not None and not req.get("sent"):
            for d in gone:
                drop(key, d)
        return {"ok": True, "key": key, "removed": gone}
    if op == "gc":
        return {"ok": True, "dry_run": bool(req.get("dry_run")), "max_age_s": max_age_s,
                "removed": collect(store, sent, max_age_s, dry_run=bool(req.get("dry_run")))}  # fmt: skip
    if op == "du":
        return {"ok": True, **usage(store.data_dir)}
    raise ConfigError(f"unknown store op {op!r}")
