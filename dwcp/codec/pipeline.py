"""The HDE chunk codec: one chunk in, one self-describing frame out, and back.

Theory of operation
-------------------
``ChunkEncoder.encode`` turns one chunk (any contiguous buffer: bytes,
mmap, numpy array; never copied when it travels raw) into an
``EncodedFrame`` = a 64-byte header (dwcp.wire.consts) + payload.  Choice
of codec, cheapest first:

1. all zero                    -> CODEC_ZERO, no payload;
2. a baseline is given (delta) -> fused XOR+ZRLE (``delta_encode``) against
   the baseline chunk; unchanged chunks become an empty CODEC_XBZRLE
   payload; zstd on top when it pays (CODEC_XBZRLE_ZSTD); if the delta is
   not clearly smaller than the chunk, fall through to 3;
3. zero pages elided           -> CODEC_SPARSE when at least one page in
   ``sparse_min_zero_fraction`` is zero (a page list over an all-zero base);
4. zstd at the level chosen by ``LevelController`` (with the send's
   dictionary if it has one: CODEC_ZSTD_DICT) unless the cheap probe says the data is
   incompressible or the level controller says raw is faster;
5. raw.

``encode_pages`` is the "pages" mode: the receiver holds some other version
and told us its per-page hashes; only pages that differ travel
(CODEC_PAGES, zstd on top when it pays).

``ChunkDecoder.decode`` dispatches on the header's codec and nothing else,
never allocates more than ``raw_len`` (capped by the header rules) or the
delta bound, and verifies the chunk hash of the result (dwcp.digest rule 4).  Any malformed input
raises ``RemoteProtocolError``; a checksum mismatch ``IntegrityError``.

Both are thread-safe: state is per call, zstd contexts are per thread,
metrics and the level controller take a lock.  An encoder runs at most
``compress_workers`` encodes at once (a semaphore): stream threads beyond
that wait for a slot instead of competing for the same cores.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dwcp._backend import impl as _k
from dwcp.digest import LEAF_BYTES, chunk_hash, hash_of_blocks
from dwcp.errors import ConfigError, IntegrityError, InternalError, LocalProtocolError, RemoteProtocolError
from dwcp.wire import consts as C

from .compress import (
    _CONTEXTS,
    LEVELS,
    LevelController,
    looks_incompressible,
    zstd_decompress,
)
from .metrics import CodecMetrics

if TYPE_CHECKING:
    from .dictionaries import Dictionary

if TYPE_CHECKING:
    from dwcp.config import CodecSettings

__all__ = ["CodecConfig", "EncodedFrame", "ChunkEncoder", "ChunkDecoder", "chunk_spans"]


@dataclass(frozen=True)
class CodecConfig:
    """Codec settings (units in the names); validated on construction."""

    page_size_bytes: int = C.PAGE_SIZE
    zstd_level: int | None = None  # None = adaptive (LevelController)
    zstd_level_min: int = -7  # the adaptive level's bounds (LevelController's levels within them)
    zstd_level_max: int = 9
    link_rate_bytes_per_s: float = 1.25e9  # what the link is expected to carry (10 Gbit/s)
    compress_workers: int = 1  # chunks encoded at once (more callers wait); the level controller's core count
    sparse_min_zero_fraction: float = 0.125
    delta_max_fraction: float = 0.5  # a delta larger than this fraction of the chunk goes full
    zstd_min_gain: float = 0.9  # keep zstd output only if <= this fraction of its input
    incompressible_threshold: float = 0.95

    def __post_init__(self) -> None:
        ps = self.page_size_bytes
        if ps < 512 or ps > 65536 or ps & (ps - 1):
            raise ConfigError(f"page_size_bytes must be a power of two in [512, 65536], got {ps}")
        for name in ("sparse_min_zero_fraction", "delta_max_fraction", "zstd_min_gain",
                     "incompressible_threshold"):  # fmt: skip
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {v}")
        if self.link_rate_bytes_per_s <= 0 or self.compress_workers < 1:
            raise ConfigError("link_rate_bytes_per_s must be positive and compress_workers >= 1")
        if self.zstd_level_min > self.zstd_level_max:
            raise ConfigError(f"zstd_level_min {self.zstd_level_min} > zstd_level_max {self.zstd_level_max}")

    @classmethod
    def from_settings(cls, settings: CodecSettings, *, link_rate_bytes_per_s: float,
                      compress_workers: int) -> CodecConfig:  # fmt: skip
        """The encoder config of the [codec] settings (zstd level or its bounds) on a link of that rate."""
        return cls(zstd_level=settings.fixed_level, zstd_level_min=settings.zstd_level_min,
                   zstd_level_max=settings.zstd_level_max, link_rate_bytes_per_s=link_rate_bytes_per_s,
                   compress_workers=compress_workers)  # fmt: skip

    @property
    def adaptive_levels(self) -> tuple[int, ...]:
        """The levels the adaptive controller picks among: LEVELS within the bounds, and the bounds."""
        lo, hi = self.zstd_level_min, self.zstd_level_max
        return tuple(sorted({lv for lv in LEVELS if lo <= lv <= hi} | {lo, hi}))


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    header: bytes
    payload: bytes | memoryview  # a view of the caller's chunk when it travels raw
    codec: int
    offset: int
    raw_len: int

    @property
    def enc_len(self) -> int:
        return memoryview(self.payload).nbytes

    @property
    def wire_len(self) -> int:
        return C.HEADER_SIZE + self.enc_len

    def buffers(self) -> tuple[bytes, bytes | memoryview]:
        """(header, payload) for ``socket.sendmsg`` / ``writelines`` without joining."""
        return self.header, self.payload

    def tobytes(self) -> bytes:
        return self.header + bytes(self.payload)


def _chunk_hash(mv: memoryview, blocks: bytes | None) -> int:
    """A DATA frame's raw_hash (dwcp.digest rule 4), from the block hashes when the caller has them."""
    if blocks is None:
        return chunk_hash(mv)[0]
    if len(blocks) != 16 * -(-mv.nbytes // LEAF_BYTES):
        raise ValueError(f"{len(blocks) // 16} block hashes for a {mv.nbytes}-byte chunk")
    return hash_of_blocks(blocks)


def _as_u8(data) -> memoryview:
    mv = memoryview(data)
    if not mv.c_contiguous:
        raise ValueError("chunk buffers must be C-contiguous")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def chunk_spans(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each chunk of an object of ``size`` bytes."""
    return [(off, min(chunk_size, size - off)) for off in range(0, size, chunk_size)]


def _scratch(n: int) -> np.ndarray:
    # np.empty: no zero-fill of a buffer the kernel overwrites anyway.
    return np.empty(max(n, 1), dtype=np.uint8)


def _shrink(buf: np.ndarray, n: int) -> bytes | memoryview:
    """Give back ``buf[:n]`` without pinning a much larger scratch buffer."""
    if n * 4 < buf.nbytes:
        return buf[:n].tobytes()
    return buf.data[:n]


class ChunkEncoder:
    def __init__(
        self,
        config: CodecConfig | None = None,
        *,
        levels: LevelController | None = None,
        metrics: CodecMetrics | None = None,
    ) -> None:
        self.config = config if config is not None else CodecConfig()
        self.levels = levels if levels is not None else LevelController(
            self.config.link_rate_bytes_per_s, self.config.compress_workers, fixed_level=self.config.zstd_level,
            levels=self.config.adaptive_levels,
        )  # fmt: skip
        self.metrics = metrics if metrics is not None else CodecMetrics()
        # Invariant: 0 <= busy <= peak_concurrent <= config.compress_workers (encodes running now / ever at once)
        self._slots = threading.BoundedSemaphore(self.config.compress_workers)
        self._busy_lock = threading.Lock()
        self.busy = 0
        self.peak_concurrent = 0

    def _enter(self) -> None:
        self._slots.acquire()
        with self._busy_lock:
            self.busy += 1
            self.peak_concurrent = max(self.peak_concurrent, self.busy)

    def _leave(self) -> None:
        with self._busy_lock:
            self.busy -= 1
        self._slots.release()

    # -- public ----------------------------------------------------------
    def encode(
        self,
        chunk,
        *,
        offset: int = 0,
        transfer_id: int = 0,
        base=None,
        base_digest: bytes | None = None,
        last: bool = False,
        dictionary: Dictionary | None = None,
        block_hashes: bytes | None = None,
    ) -> EncodedFrame:
        """Encode one chunk; with ``base`` (+ its object's ``base_digest``) as a delta; zstd with
        ``dictionary`` where it pays (the receiver must hold it: the transfer announced it).
        ``block_hashes``: the chunk's block hashes when the caller knows them (dwcp.digest rule 4:
        a sender that hashed the object for its digest), so the chunk is not hashed again.

        At most ``config.compress_workers`` encodes run at once; more callers wait their turn.
        """
        self._enter()
        try:
            return self._encode(chunk, offset, transfer_id, base, base_digest, last, dictionary, block_hashes)
        finally:
            self._leave()

    def _encode(
        self, chunk, offset, transfer_id, base, base_digest, last, dictionary, blocks
    ) -> EncodedFrame:
        t0 = time.perf_counter()
        mv = _as_u8(chunk)
        n = mv.nbytes
        if n > C.MAX_RAW_LEN:
            raise LocalProtocolError(
                f"chunk of {n} bytes exceeds the maximum {C.MAX_RAW_LEN}", C.ERR_BAD_LENGTH
            )
        raw_hash = _chunk_hash(mv, blocks)
        flags = C.FLAG_LAST if last else 0
        codec, payload, dict_id, digest = self._choose(mv, base, base_digest, dictionary)
        header = _k.pack_header(
            C.FRAME_DATA, codec, flags, transfer_id, offset, n, memoryview(payload).nbytes,
            dict_id, digest, raw_hash,
        )  # fmt: skip
        self.metrics.record_encode(codec, n, memoryview(payload).nbytes, time.perf_counter() - t0)
        return EncodedFrame(header, payload, codec, offset, n)

    def encode_pages(
        self,
        chunk,
        peer_page_hashes: bytes,
        base_digest: bytes,
        *,
        offset: int = 0,
        transfer_id: int = 0,
        last: bool = False,
        block_hashes: bytes | None = None,
    ) -> EncodedFrame:
        """ "pages" mode: send only the pages whose xxh3-64 differs from the peer's (bounded like ``encode``)."""
        self._enter()
        try:
            return self._encode_pages(
                chunk, peer_page_hashes, base_digest, offset, transfer_id, last, block_hashes
            )
        finally:
            self._leave()

    def _encode_pages(
        self, chunk, peer_page_hashes, base_digest, offset, transfer_id, last, blocks
    ) -> EncodedFrame:
        t0 = time.perf_counter()
        mv = _as_u8(chunk)
        n = mv.nbytes
        ps = self.config.page_size_bytes
        npages = (n + ps - 1) // ps
        if len(peer_page_hashes) != 8 * npages:
            raise ValueError(
                f"need {npages} page hashes for a {n}-byte chunk, got {len(peer_page_hashes) // 8}"
            )
        if len(base_digest) != 16 or base_digest == C.ZERO_DIGEST:
            raise ValueError("pages mode needs the 16-byte digest of the peer's version")
        mine = np.frombuffer(_k.page_hashes(mv, ps), dtype="<u8")
        theirs = np.frombuffer(peer_page_hashes, dtype="<u8")
        dirty = (mine != theirs).astype(np.uint8)
        codec = C.CODEC_PAGES
        payload: bytes | memoryview = b""
        if dirty.any():
            out = _scratch(_k.delta_bound(n, ps))
            m = _k.pages_encode(mv, dirty.data, out.data, ps)
            if m < 0:
                raise InternalError("pages_encode overflowed its own bound")
            payload = _shrink(out, m)
            z = self._maybe_zstd(payload, None)
            if z is not None:
                codec, payload = C.CODEC_PAGES_ZSTD, z
        header = _k.pack_header(
            C.FRAME_DATA, codec, C.FLAG_LAST if last else 0, transfer_id, offset, n,
            memoryview(payload).nbytes, 0, base_digest, _chunk_hash(mv, blocks),
        )  # fmt: skip
        self.metrics.record_encode(codec, n, memoryview(payload).nbytes, time.perf_counter() - t0)
        return EncodedFrame(header, payload, codec, offset, n)

    # -- internals -------------------------------------------------------
    def _choose(self, mv: memoryview, base, base_digest, dictionary):
        n = mv.nbytes
        ps = self.config.page_size_bytes
        if base is not None:
            bmv = _as_u8(base)
            if bmv.nbytes != n:
                raise ValueError(f"baseline chunk has {bmv.nbytes} bytes, chunk has {n}")
            if base_digest is None or len(base_digest) != 16 or bytes(base_digest) == C.ZERO_DIGEST:
                raise ValueError("a delta needs the 16-byte xxh3-128 digest of the baseline object")
        if _k.is_zero(mv):
            return C.CODEC_ZERO, b"", 0, C.ZERO_DIGEST
        if base is not None:
            limit = int(n * self.config.delta_max_fraction)
            out = _scratch(min(_k.delta_bound(n, ps), limit + 16))
            m = _k.delta_encode(bmv, mv, out.data, ps)
            if 0 <= m <= limit:
                payload = _shrink(out, m)
                z = self._maybe_zstd(payload, None) if m >= 64 else None
                if z is not None:
                    return C.CODEC_XBZRLE_ZSTD, z, 0, bytes(base_digest)
                return C.CODEC_XBZRLE, payload, 0, bytes(base_digest)
            # the delta does not pay (heavily rewritten chunk): send it as new data
        payload_codec, payload = C.CODEC_RAW, mv
        nz = _k.nonzero_pages(mv, ps)
        npages = len(nz)
        zero_pages = npages - int(np.count_nonzero(np.frombuffer(nz, np.uint8)))
        if zero_pages and zero_pages >= npages * self.config.sparse_min_zero_fraction:
            out = _scratch(_k.delta_bound(n, ps))
            m = _k.pages_encode(mv, nz, out.data, ps)
            if m < 0:
                raise InternalError("pages_encode overflowed its own bound")
            payload_codec, payload = C.CODEC_SPARSE, _shrink(out, m)
        zdict = dictionary.zdict if dictionary is not None and payload_codec == C.CODEC_RAW else None
        z = self._maybe_zstd(payload, zdict)
        if z is not None:
            if zdict is not None:
                return C.CODEC_ZSTD_DICT, z, dictionary.id, C.ZERO_DIGEST
            return (
                (C.CODEC_SPARSE_ZSTD if payload_codec == C.CODEC_SPARSE else C.CODEC_ZSTD),
                z,
                0,
                C.ZERO_DIGEST,
            )
        return payload_codec, payload, 0, C.ZERO_DIGEST

    def _maybe_zstd(self, payload, zdict) -> bytes | None:
        """zstd-compress ``payload`` if the level controller and the probe say it pays."""
        level = self.levels.choose()
        if level is None:
            return None
        n = memoryview(payload).nbytes
        if n >= 16384 and looks_incompressible(payload, threshold=self.config.incompressible_threshold):
            return None
        t0 = time.perf_counter()
        z = _CONTEXTS.compressor(level, zdict).compress(payload)
        self.levels.observe(level, n, len(z), time.perf_counter() - t0)
        return z if len(z) <= n * self.config.zstd_min_gain else None


class ChunkDecoder:
    def __init__(
        self,
        config: CodecConfig | None = None,
        *,
        metrics: CodecMetrics | None = None,
    ) -> None:
        self.config = config if config is not None else CodecConfig()
        self.metrics = metrics if metrics is not None else CodecMetrics()

    def decode(
        self,
        header,
        payload,
        *,
        base=None,
        out=None,
        dictionary: Dictionary | None = None,
        blocks_out: list[bytes] | None = None,
    ):
        """Decode one DATA frame's payload; returns ``out`` (or a new bytearray) filled and verified.

        ``header`` is a parsed FrameHeader; ``base`` the baseline chunk (the
        bytes at ``header.offset`` of the version ``header.base_digest``) for
        delta codecs; ``out`` an optional writable buffer of ``raw_len`` bytes; ``dictionary`` the one
        the transfer announced (a CODEC_ZSTD_DICT frame naming another id is a RemoteProtocolError);
        ``blocks_out`` a list that gets the chunk's block hashes (the tree leaves of a leaf-aligned chunk:
        dwcp.digest rule 4), so the caller need not hash the chunk again.
        """
        t0 = time.perf_counter()
        try:
            result = self._decode(header, payload, base, out, dictionary, blocks_out)
        except IntegrityError:
            self.metrics.record_failure(checksum=True)
            raise
        except RemoteProtocolError:
            self.metrics.record_failure(checksum=False)
            raise
        self.metrics.record_decode(header.codec, header.raw_len, header.enc_len, time.perf_counter() - t0)
        return result

    def _decode(self, h, payload, base, out, dictionary, blocks_out):
        if h.frame_type != C.FRAME_DATA:
            raise ValueError(f"frame type {h.frame_type} is not a data frame")
        pmv = _as_u8(payload)
        if pmv.nbytes != h.enc_len:
            raise ValueError(f"payload has {pmv.nbytes} bytes, header says {h.enc_len}")
        n = h.raw_len
        ps = self.config.page_size_bytes
        if out is None:
            out = bytearray(n)  # zero-filled: the starting point for zero and sparse
            fresh = True
        else:
            fresh = False
            if memoryview(out).nbytes != n:
                raise ValueError(f"output buffer has {memoryview(out).nbytes} bytes, header says {n}")
        omv = _as_u8(out)
        if omv.readonly:
            raise ValueError("output buffer is read-only")
        codec = h.codec
        if codec in C.ZSTD_CODECS:
            if codec == C.CODEC_ZSTD:
                pmv = memoryview(zstd_decompress(pmv, n, exact=True))
            elif codec == C.CODEC_ZSTD_DICT:
                if dictionary is None or dictionary.id != h.dict_id:
                    raise RemoteProtocolError(
                        f"chunk at {h.offset} is compressed with zstd dictionary {h.dict_id}; the transfer "
                        f"announced {'none' if dictionary is None else dictionary.id}", C.ERR_UNKNOWN_DICT
                    )  # fmt: skip
                pmv = memoryview(zstd_decompress(pmv, n, exact=True, zdict=dictionary.zdict))
            else:
                pmv = memoryview(zstd_decompress(pmv, _k.delta_bound(n, ps), exact=False))
            codec = {C.CODEC_ZSTD: C.CODEC_RAW, C.CODEC_ZSTD_DICT: C.CODEC_RAW,
                     C.CODEC_SPARSE_ZSTD: C.CODEC_SPARSE, C.CODEC_XBZRLE_ZSTD: C.CODEC_XBZRLE,
                     C.CODEC_PAGES_ZSTD: C.CODEC_PAGES}[codec]  # fmt: skip
        if codec == C.CODEC_RAW:
            omv[:] = pmv
        elif codec == C.CODEC_ZERO:
            if not fresh:
                np.frombuffer(omv, np.uint8)[:] = 0
        elif codec == C.CODEC_SPARSE:
            if not fresh:
                np.frombuffer(omv, np.uint8)[:] = 0
            if pmv.nbytes == 0:
                raise RemoteProtocolError(
                    "empty sparse payload (an all-zero chunk is CODEC_ZERO)", C.ERR_MALFORMED
                )
            _k.delta_decode(pmv, omv, omv, ps)
        elif codec in (C.CODEC_XBZRLE, C.CODEC_PAGES):
            if base is None:
                raise RemoteProtocolError(
                    f"delta against baseline {h.base_digest.hex()} which this side does not hold",
                    C.ERR_UNKNOWN_BASELINE,
                )
            bmv = _as_u8(base)
            if bmv.nbytes != n:
                raise ValueError(f"baseline chunk has {bmv.nbytes} bytes, header says {n}")
            _k.delta_decode(pmv, bmv, omv, ps)
        else:  # unreachable: parse_header admits only known codecs
            raise RemoteProtocolError(f"unknown codec {codec}", C.ERR_BAD_CODEC)
        ch, blocks = chunk_hash(omv)
        if ch != h.raw_hash:
            raise IntegrityError(
                f"chunk at offset {h.offset} ({n} bytes, {C.CODEC_NAMES[h.codec]}) fails its chunk hash check",
                C.ERR_CHECKSUM,
            )
        if blocks_out is not None:
            blocks_out.append(blocks)
        return out
