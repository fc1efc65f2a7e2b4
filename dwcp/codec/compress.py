"""zstd through python-zstandard: reusable contexts, the adaptive level
controller and the cheap incompressibility probe (dictionaries: dwcp.codec.dictionaries).

Theory of operation
-------------------
Compression only pays when it makes the *transfer* faster.  With ``W``
cores compressing at ``s`` bytes/s each to a fraction ``r`` of the input,
on a link of ``R`` bytes/s, the raw bytes move at ``min(W*s, R/r)``; sending
raw moves them at ``R``.  ``LevelController`` keeps a moving estimate of
``s`` and ``r`` per level from what the encoder measured on real chunks,
picks the level (or ``None`` = raw) with the best expected rate, and now and
then probes a neighbouring level so the estimates follow the data.  It is
sans-IO: the encoder reports ``observe(level, raw, out, seconds)``; nothing
in here reads a clock.

Rules
-----
1. Compressor/decompressor contexts are per thread (zstd contexts are not
   thread-safe); dictionaries are shared and immutable.
2. Every zstd frame we write carries its content size; a decoder refuses a
   frame whose declared size differs from what the header promised, before
   allocating (python-zstandard trusts the declared size over
   ``max_output_size``).
3. Contexts made with a dictionary are cached per dictionary *object* (and
   hold it, so its identity is never reused): two dictionaries that share a
   zstd id never share a context.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import zstandard

from dwcp.errors import ConfigError, RemoteProtocolError
from dwcp.wire import consts as C

__all__ = [
    "LEVELS",
    "LevelController",
    "ZstdContexts",
    "looks_incompressible",
    "zstd_decompress",
]

# The levels the controller chooses among: negative levels are zstd's fast
# modes (GB/s per core), 1-3 the usual trade-off, 6/9 for slow links.
LEVELS = (-7, -3, -1, 1, 3, 6, 9)

# Prior speed (bytes/s per core) and output ratio per level, replaced by
# measurements as soon as chunks are compressed.  Conservative guesses for
# mixed VM-like data on a ~3 GHz core.
_PRIOR = {-7: (1.6e9, 0.55), -3: (1.1e9, 0.50), -1: (8.0e8, 0.47), 1: (5.5e8, 0.42),
          3: (2.5e8, 0.40), 6: (9.0e7, 0.38), 9: (4.5e7, 0.37)}  # fmt: skip


class ZstdContexts(threading.local):
    """Per-thread zstd compressors keyed by (level, dictionary), and one decompressor per dictionary."""

    def __init__(self) -> None:
        # keyed by id() of the dictionary object, which the value holds (rule 3)
        self.cctx: dict[tuple[int, int], tuple[object, zstandard.ZstdCompressor]] = {}
        self.dctx: dict[int, tuple[object, zstandard.ZstdDecompressor]] = {}

    def compressor(self, level: int, zdict: zstandard.ZstdCompressionDict | None = None):
        key = (level, id(zdict))
        c = self.cctx.get(key)
        if c is None:
            c = self.cctx[key] = (zdict, zstandard.ZstdCompressor(level=level, dict_data=zdict,
                                                                 write_content_size=True, write_checksum=False))  # fmt: skip
        return c[1]

    def decompressor(self, zdict: zstandard.ZstdCompressionDict | None = None):
        key = id(zdict)
        d = self.dctx.get(key)
        if d is None:
            d = self.dctx[key] = (zdict, zstandard.ZstdDecompressor(dict_data=zdict))
        return d[1]


_CONTEXTS = ZstdContexts()


def zstd_decompress(payload, max_size: int, exact: bool, zdict=None) -> bytes:
    """Decompress one zstd frame of at most ``max_size`` bytes (exactly, if ``exact``).

    Any malformed input -- no frame, no declared content size, a size over
    the bound, trailing bytes, corrupt blocks -- is a RemoteProtocolError.
    """
    try:
        size = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(f"not a zstd frame: {exc}", C.ERR_MALFORMED) from None
    if size < 0:
        raise RemoteProtocolError("zstd frame without a content size", C.ERR_MALFORMED)
    if size > max_size or (exact and size != max_size):
        raise RemoteProtocolError(
            f"zstd frame declares {size} bytes, expected {'exactly' if exact else 'at most'} {max_size}",
            C.ERR_BAD_LENGTH,
        )
    try:
        out = _CONTEXTS.decompressor(zdict).decompress(payload, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(f"corrupt zstd frame: {exc}", C.ERR_MALFORMED) from None
    if len(out) != size:
        raise RemoteProtocolError(f"zstd frame gave {len(out)} bytes, declared {size}", C.ERR_MALFORMED)
    return out


def looks_incompressible(
    data, *, samples: int = 8, sample_bytes: int = 1024, threshold: float = 0.95
) -> bool:
    """Decide cheaply (a few KiB compressed at a fast level) whether zstd is futile.

    Samples are spread evenly over ``data``; the verdict is "incompressible"
    when the samples shrink to no less than ``threshold`` of their size.
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n <= samples * sample_bytes:
        probe = bytes(mv)
    else:
        step = (n - sample_bytes) // (samples - 1)
        probe = b"".join(mv[i * step : i * step + sample_bytes] for i in range(samples))
    if not probe:
        return False
    out = _CONTEXTS.compressor(-1).compress(probe)
    return len(out) >= threshold * len(probe)


@dataclass
class _Estimate:
    speed: float  # input bytes/s per core
    ratio: float  # output/input
    samples: int = 0


class LevelController:
    """Choose the zstd level that maximises the expected transfer rate.

    ``link_rate_bytes_per_s`` is the rate the link is expected to carry (the
    aggregate cap or the measured goodput); ``workers`` the number of cores
    compressing in parallel.  ``fixed_level`` pins a level (``None`` = adapt).
    """

    def __init__(
        self,
        link_rate_bytes_per_s: float,
        workers: int = 1,
        *,
        fixed_level: int | None = None,
        probe_every: int = 32,
        alpha: float = 0.2,
        levels: Iterable[int] = LEVELS,
    ) -> None:
        if link_rate_bytes_per_s <= 0:
            raise ConfigError(f"link rate must be positive, got {link_rate_bytes_per_s}")
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if fixed_level is not None and not -131072 <= fixed_level <= 22:
            raise ConfigError(f"zstd level {fixed_level} outside [-131072, 22]")
        if probe_every < 2:
            raise ConfigError(f"probe_every must be >= 2, got {probe_every}")
        self.link_rate = float(link_rate_bytes_per_s)
        self.workers = workers
        self.fixed_level = fixed_level
        self.levels = tuple(sorted(levels))
        self._est = {lv: _Estimate(*_PRIOR.get(lv, (1e8, 0.5))) for lv in self.levels}
        self._alpha = alpha
        self._probe_every = probe_every
        self._n = 0
        self._lock = threading.Lock()
        self.used: dict[int, int] = {}  # level -> chunks compressed at it (observed), for reports

    def expected_rate(self, level: int | None) -> float:
        """Raw bytes/s the transfer moves at with ``level`` (None = raw)."""
        if level is None:
            return self.link_rate
        e = self._est[level]
        return min(self.workers * e.speed, self.link_rate / max(e.ratio, 1e-6))

    def best(self) -> int | None:
        best: int | None = None
        best_rate = self.expected_rate(None)
        for lv in self.levels:
            r = self.expected_rate(lv)
            if r > best_rate * 1.02:  # compression must win by a margin to be worth its CPU
                best, best_rate = lv, r
        return best

    def choose(self) -> int | None:
        """The level for the next chunk; every ``probe_every`` chunks, a neighbour."""
        if self.fixed_level is not None:
            return self.fixed_level
        with self._lock:
            self._n += 1
            n = self._n
            lv = self.best()
        if n % self._probe_every == 0:
            i = self.levels.index(lv) if lv is not None else -1
            j = i + (1 if (n // self._probe_every) % 2 else -1)
            if 0 <= j < len(self.levels):
                return self.levels[j]
            if j == -1:
                return self.levels[0]  # from "raw", probe the fastest level
        return lv

    def observe(self, level: int, raw_bytes: int, out_bytes: int, seconds: float) -> None:
        """Feed one measured compression back (counted in ``used``; estimates only for levels in the table)."""
        if raw_bytes <= 0:
            return
        with self._lock:
            self.used[level] = self.used.get(level, 0) + 1
        e = self._est.get(level)
        if e is None:
            return
        speed = raw_bytes / max(seconds, 1e-9)
        ratio = out_bytes / raw_bytes
        with self._lock:
            a = self._alpha if e.samples else 1.0
            e.speed += a * (speed - e.speed)
            e.ratio += a * (ratio - e.ratio)
            e.samples += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "link_rate_bytes_per_s": self.link_rate,
                "workers": self.workers,
                "chosen": self.fixed_level if self.fixed_level is not None else self.best(),
                "levels": {
                    lv: {"speed_bytes_per_s": e.speed, "ratio": e.ratio, "samples": e.samples}
                    for lv, e in self._est.items()
                },  # fmt: skip
            }
