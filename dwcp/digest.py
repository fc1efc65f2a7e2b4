"""The object digest: the root of a chunk-hash tree, computable as chunks land in any order.

Theory of operation
-------------------
A whole-object hash must be computed in order, so a receiver whose chunks
arrive out of order over many streams had to read the whole object again at
commit.  The digest here is the root of a two-level tree instead: the object
is cut into leaves of ``LEAF_BYTES``, each leaf is hashed, and the root hashes
the object's size and the leaf hashes in order.  A receiver hashes each leaf
while its chunk is still in cache (``TreeHasher.add``) and, at commit, hashes
only the leaf hashes -- plus the few leaves no single chunk held whole (a
chunk size that is not a multiple of the leaf, a chunk resumed from an earlier
attempt), which it reads once.  The leaf hashes are what replicas compare to
find the leaves that differ (anti-entropy).

Rules
-----
1. Leaves are ``LEAF_BYTES`` (1 MiB) long, the last one shorter; an empty
   object has none.  The leaf size is fixed by the protocol (version 2), not
   by any transfer's chunk size: sender, receiver, fetch and the store agree
   whatever chunking each used.
2. ``leaf_i = xxh3-128(leaf i's bytes)``;
   ``root = xxh3-128(DOMAIN || size as u64 little-endian || leaf_0 || leaf_1 || ...)``.
3. ``TreeHasher`` keeps one hash per leaf added (memory grows with the bytes
   received, never with the size a peer announces) and may be fed from
   several threads at once; a leaf added twice must hash the same (a chunk
   is added only once it is verified).
4. A DATA frame's ``raw_hash`` (the *chunk hash*, protocol version 3) is
   ``xxh3-64(xxh3-128(block_0) || xxh3-128(block_1) || ...)`` over the
   chunk's ``LEAF_BYTES`` blocks counted from the chunk's start.  For a chunk
   that starts on a leaf boundary these blocks are the object's leaves, so
   one pass over the bytes both verifies the chunk and feeds the tree
   (``TreeHasher.add_blocks``), and a sender that hashed the object for its
   digest knows every such chunk's hash without reading it again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import xxhash

from dwcp._backend import impl as _k

__all__ = ["LEAF_BYTES", "DOMAIN", "object_digest", "chunk_hash", "hash_of_blocks", "TreeHasher"]

LEAF_BYTES = 1 << 20
DOMAIN = b"dwcp-tree-v1"


def _leaf(view) -> bytes:
    return _k.xxh3_128(view)


def _root(size: int, leaves) -> bytes:
    h = xxhash.xxh3_128()
    h.update(DOMAIN)
    h.update(size.to_bytes(8, "little"))
    for leaf in leaves:
        h.update(leaf)
    return h.digest()


def object_digest(data) -> bytes:
    """The digest of a whole object held in one contiguous buffer."""
    mv = memoryview(data).cast("B")
    n = mv.nbytes
    leaves = _k.block_hashes(mv, LEAF_BYTES)
    return _root(n, (leaves[i : i + 16] for i in range(0, len(leaves), 16)))


def hash_of_blocks(blocks: bytes) -> int:
    """The chunk hash (rule 4) from the chunk's block hashes."""
    return _k.xxh3_64(blocks)


def chunk_hash(view) -> tuple[int, bytes]:
    """(chunk hash, block hashes) of one chunk's raw bytes (rule 4)."""
    blocks = _k.block_hashes(view, LEAF_BYTES)
    return _k.xxh3_64(blocks), blocks


class TreeHasher:
    """The leaf hashes of one object of ``size`` bytes, added as its bytes are seen (rule 3)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size {size} < 0")
        self.size = size
        self.nleaves = -(-size // LEAF_BYTES)
        self._leaves: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def add(self, offset: int, view) -> int:
        """Hash every leaf that lies whole inside ``view`` (the bytes at ``offset``); returns how many."""
        mv = memoryview(view).cast("B")
        end = offset + mv.nbytes
        if offset < 0 or end > self.size:
            raise ValueError(f"{mv.nbytes} bytes at {offset} are outside the {self.size}-byte object")
        first = -(-offset // LEAF_BYTES)
        got = {}
        for i in range(first, self.nleaves):
            lo = i * LEAF_BYTES
            hi = min(lo + LEAF_BYTES, self.size)
            if hi > end:
                break
            got[i] = _leaf(mv[lo - offset : hi - offset])
        with self._lock:
            self._leaves.update(got)
        return len(got)

    def add_blocks(self, offset: int, length: int, blocks: bytes) -> int:
        """Add the block hashes of a verified chunk of ``length`` bytes at ``offset`` (rule 4): those
        that are whole leaves, which all are when ``offset`` is on a leaf boundary (the last one if
        the chunk ends the object or a leaf); returns how many.  A chunk off the boundary adds none."""
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"{length} bytes at {offset} are outside the {self.size}-byte object")
        if len(blocks) != 16 * -(-length // LEAF_BYTES):
            raise ValueError(f"{len(blocks) // 16} block hashes for a {length}-byte chunk")
        if offset % LEAF_BYTES:
            return 0
        first, end = offset // LEAF_BYTES, offset + length
        got = {}
        for k in range(len(blocks) // 16):
            hi = min((first + k + 1) * LEAF_BYTES, self.size)
            if hi > end:  # a short last block that is not the leaf's end
                break
            got[first + k] = blocks[16 * k : 16 * k + 16]
        with self._lock:
            self._leaves.update(got)
        return len(got)

    def add_chunk(self, offset: int, length: int, blocks: bytes, view=None) -> int:
        """The leaves a verified chunk holds whole: from its block hashes when it starts on a leaf boundary
        (rule 4), else hashed from ``view``, its bytes (None: none; ``root`` reads them); returns how many."""
        if offset % LEAF_BYTES == 0 or view is None:
            return self.add_blocks(offset, length, blocks)
        return self.add(offset, view)

    def leaves_of(self, offset: int, length: int) -> bytes | None:
        """The block hashes (rule 4) of the chunk of ``length`` bytes at ``offset``, when it starts on
        a leaf boundary and every leaf it covers was added; else None (hash the bytes)."""
        if offset % LEAF_BYTES or length <= 0:
            return None
        end = offset + length
        if end != self.size and end % LEAF_BYTES:
            return None
        with self._lock:
            try:
                return b"".join(self._leaves[i] for i in range(offset // LEAF_BYTES, -(-end // LEAF_BYTES)))
            except KeyError:
                return None

    def discard(self, offset: int, length: int) -> None:
        """Forget the leaves that overlap ``length`` bytes at ``offset`` (they are to be received again)."""
        if length <= 0:
            return
        with self._lock:
            for i in range(offset // LEAF_BYTES, (offset + length - 1) // LEAF_BYTES + 1):
                self._leaves.pop(i, None)

    @property
    def complete(self) -> bool:
        """Every leaf was added: ``root`` needs no reader."""
        with self._lock:
            return len(self._leaves) == self.nleaves

    def missing(self) -> list[int]:
        with self._lock:
            return [i for i in range(self.nleaves) if i not in self._leaves]

    def root(self, read: Callable[[int, int], object] | None = None) -> bytes:
        """The digest; leaves not added are read with ``read(offset, length)`` (a buffer), once each.

        ValueError if a leaf is missing and there is no ``read``.
        """
        with self._lock:
            have = dict(self._leaves)

        def leaves():
            for i in range(self.nleaves):
                h = have.get(i)
                if h is None:
                    if read is None:
                        raise ValueError(f"leaf {i} of {self.nleaves} was never added")
                    lo = i * LEAF_BYTES
                    h = _leaf(read(lo, min(LEAF_BYTES, self.size - lo)))
                yield h

        return _root(self.size, leaves())
