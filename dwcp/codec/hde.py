"""HDE: object-level encode/decode over the chunk codec, with baselines.

Theory of operation
-------------------
``HDEEncoder.encode_object(key, data, now=...)`` cuts ``data`` into
page-aligned chunks and encodes each with ``ChunkEncoder`` -- as a delta
against the key's baseline when ``BaselineStore.plan`` offers one (same
size; within the chain and refresh limits), in full otherwise.  Chunks are
encoded by a thread pool when ``workers > 1``: the kernels and zstd release
the GIL, so this scales with cores.  After the receiver confirmed the
object, ``commit`` records it as the key's newest baseline.

``HDEDecoder.decode_object`` is the receiving side: it applies frames at
their offsets into one output buffer (against the receiver's copy of the
baseline for deltas) and checks the whole-object xxh3-128 at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dwcp._backend import impl as _k
from dwcp.errors import ConfigError, IntegrityError, RemoteProtocolError
from dwcp.wire import consts as C

from .baselines import Baseline, BaselineStore
from .pipeline import ChunkDecoder, ChunkEncoder, EncodedFrame, _as_u8

__all__ = ["HDEEncoder", "HDEDecoder", "ObjectPlan", "chunk_spans"]


def chunk_spans(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each chunk of an object of ``size`` bytes."""
    return [(off, min(chunk_size, size - off)) for off in range(0, size, chunk_size)]


@dataclass(frozen=True)
class ObjectPlan:
    mode: str  # "full" or "delta"
    base: Baseline | None
    digest: bytes  # xxh3-128 of the object being sent
    size: int
    chunk_size: int


class HDEEncoder:
    def __init__(
        self,
        chunk_encoder: ChunkEncoder | None = None,
        baselines: BaselineStore | None = None,
        *,
        chunk_size_bytes: int = 4 << 20,
        workers: int = 1,
    ) -> None:
        self.chunks = chunk_encoder if chunk_encoder is not None else ChunkEncoder()
        self.baselines = baselines if baselines is not None else BaselineStore()
        ps = self.chunks.config.page_size_bytes
        if chunk_size_bytes < ps or chunk_size_bytes % ps or chunk_size_bytes > C.MAX_RAW_LEN:
            raise ConfigError(
                f"chunk_size_bytes must be a multiple of the page size {ps} and at most {C.MAX_RAW_LEN}, "
                f"got {chunk_size_bytes}"
            )
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.chunk_size = chunk_size_bytes
        self.workers = workers

    def plan(self, key: str, data, now: float) -> ObjectPlan:
        mv = _as_u8(data)
        digest = _k.xxh3_128(mv)
        base = self.baselines.plan(key, now)
        if base is not None and base.size != mv.nbytes:
            base = None
        return ObjectPlan("delta" if base else "full", base, digest, mv.nbytes, self.chunk_size)

    def encode_object(
        self,
        data,
        plan: ObjectPlan,
        *,
        transfer_id: int = 0,
        resource_type: str | None = None,
    ) -> Iterator[EncodedFrame]:
        """Yield one frame per chunk, in offset order."""
        mv = _as_u8(data)
        if mv.nbytes != plan.size:
            raise ValueError(f"object has {mv.nbytes} bytes, plan says {plan.size}")
        bmv = _as_u8(plan.base.data) if plan.base is not None else None
        digest = plan.base.digest if plan.base is not None else None
        spans = chunk_spans(plan.size, plan.chunk_size)
        last = len(spans) - 1

        def one(i: int) -> EncodedFrame:
            off, ln = spans[i]
            return self.chunks.encode(
                mv[off : off + ln],
                offset=off,
                transfer_id=transfer_id,
                base=bmv[off : off + ln] if bmv is not None else None,
                base_digest=digest,
                last=i == last,
                resource_type=resource_type,
            )

        if self.workers == 1 or len(spans) < 2:
            for i in range(len(spans)):
                yield one(i)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="dwcp-encode") as pool:
            # map() keeps order and runs ahead by at most the pool's queue
            yield from pool.map(one, range(len(spans)))

    def commit(self, key: str, data, plan: ObjectPlan, now: float) -> Baseline:
        """Record ``data`` (the object just sent and confirmed) as the key's newest baseline."""
        return self.baselines.record(key, plan.digest, data, now, plan.base)


class HDEDecoder:
    def __init__(self, chunk_decoder: ChunkDecoder | None = None) -> None:
        self.chunks = chunk_decoder if chunk_decoder is not None else ChunkDecoder()

    def decode_object(self, frames: Iterable, size: int, digest: bytes, *, base=None, out=None):
        """Apply every frame (objects with ``header`` and ``payload``) into ``out``; verify the whole.

        Every byte of the object must be covered exactly once; ``digest`` is
        the xxh3-128 the sender announced.
        """
        if size < 0:
            raise ValueError("size must be >= 0")
        if out is None:
            out = bytearray(size)
        omv = _as_u8(out)
        if omv.nbytes != size:
            raise ValueError(f"output buffer has {omv.nbytes} bytes, object has {size}")
        bmv = _as_u8(base) if base is not None else None
        covered = 0
        seen: set[int] = set()
        for f in frames:
            h = f.header
            if h.offset in seen:
                raise RemoteProtocolError(f"chunk at offset {h.offset} sent twice", C.ERR_MALFORMED)
            if h.offset + h.raw_len > size:
                raise RemoteProtocolError(
                    f"chunk [{h.offset}, {h.offset + h.raw_len}) lies outside the {size}-byte object",
                    C.ERR_BAD_LENGTH,
                )
            seen.add(h.offset)
            chunk_base = None
            if h.codec in C.DELTA_CODECS and bmv is not None:
                if bmv.nbytes != size:
                    raise ValueError("baseline and object sizes differ")
                chunk_base = bmv[h.offset : h.offset + h.raw_len]
            self.chunks.decode(h, f.payload, base=chunk_base, out=omv[h.offset : h.offset + h.raw_len])
            covered += h.raw_len
        if covered != size:
            raise RemoteProtocolError(f"frames cover {covered} of {size} bytes", C.ERR_TRUNCATED)
        if _k.xxh3_128(omv) != bytes(digest):
            raise IntegrityError("object fails its xxh3-128 check", C.ERR_CHECKSUM)
        return out
