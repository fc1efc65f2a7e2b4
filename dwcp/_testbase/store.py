"""Storing an object directly in an ObjectStore, as a verified receive would (for store and scrub tests)."""

from __future__ import annotations

from dwcp.digest import chunk_hash, object_digest
from dwcp.storage import ObjectStore, VersionInfo

__all__ = ["put"]


def put(store: ObjectStore, key: str, data: bytes, chunk: int = 4096) -> VersionInfo:
    """Write ``data`` as ``key``'s next version in ``chunk``-byte chunks, each marked with its hash, and commit it."""
    p = store.begin(key, object_digest(data), len(data), chunk)
    for i in range(p.nchunks):
        c = data[i * chunk : (i + 1) * chunk]
        p.write(i, c)
        p.mark_done(i, chunk_hash(c)[0])
    return p.commit()
