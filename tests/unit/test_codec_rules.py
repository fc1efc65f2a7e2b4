"""The codec by its documented rules (dwcp/codec/pipeline.py and compress.py docstrings).

test_codec.py shows each codec path round-tripping; this file pins the edges the
docstrings promise: what the encoder refuses, what the decoder refuses (and counts),
and the level controller's and dictionary store's limits.  No sockets.
"""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from dwcp._backend import impl as K
from dwcp._testbase.images import dirty_version, text_corpus, vm_image
from dwcp.codec import (
    ChunkDecoder,
    ChunkEncoder,
    CodecConfig,
    CodecMetrics,
    LevelController,
    looks_incompressible,
)
from dwcp.codec import compress as compress_mod
from dwcp.codec import dictionaries as dictionaries_mod
from dwcp.codec.dictionaries import Dictionary
from dwcp.codec.dictionaries import train as dict_train
from dwcp.config import CodecSettings
from dwcp.errors import ConfigError, DictionaryError, IntegrityError, LocalProtocolError, RemoteProtocolError
from dwcp.wire import consts as C

DIGEST = bytes(range(1, 17))
CHUNK = 64 * 1024
SLOW_LINK = 1e7  # 10 MB/s: zstd always pays
FAST_LINK = 1e11  # 100 GB/s: no level keeps up, raw is faster


def rng_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def data_header(codec: int, raw: bytes, payload: bytes, *, base_digest: bytes = C.ZERO_DIGEST):
    """A parsed DATA header as a peer would send it for ``payload`` decoding to ``raw``."""
    return K.parse_header(
        K.pack_header(
            C.FRAME_DATA,
            codec,
            0,
            1,
            0,
            len(raw),
            len(payload),
            0,
            base_digest,
            K.xxh3_64(K.block_hashes(raw)),
        )
    )


# -- CodecConfig: "validated on construction" --------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"link_rate_bytes_per_s": 0}, "link_rate_bytes_per_s"),
        ({"link_rate_bytes_per_s": -1.0}, "link_rate_bytes_per_s"),
        ({"compress_workers": 0}, "compress_workers"),
        ({"zstd_level_min": 3, "zstd_level_max": 1}, "zstd_level_min 3 > zstd_level_max 1"),
        ({"page_size_bytes": 256}, "power of two"),
        ({"page_size_bytes": 131072}, "power of two"),
        ({"delta_max_fraction": 1.5}, "delta_max_fraction"),
        ({"sparse_min_zero_fraction": 0.0}, "sparse_min_zero_fraction"),
        ({"incompressible_threshold": -0.1}, "incompressible_threshold"),
    ],
)
def test_config_refuses_what_it_cannot_honour(kw, match):
    with pytest.raises(ConfigError, match=match):
        CodecConfig(**kw)


def test_adaptive_levels_are_the_table_levels_within_the_bounds_plus_the_bounds():
    assert CodecConfig(zstd_level_min=-2, zstd_level_max=5).adaptive_levels == (-2, -1, 1, 3, 5)
    assert CodecConfig(zstd_level_min=3, zstd_level_max=3).adaptive_levels == (3,)
    assert CodecConfig().adaptive_levels == compress_mod.LEVELS


def test_from_settings_carries_the_codec_section_and_the_link():
    cfg = CodecConfig.from_settings(
        CodecSettings(zstd_level=0, zstd_level_min=-3, zstd_level_max=6),
        link_rate_bytes_per_s=5e8,
        compress_workers=3,
    )
    assert (cfg.zstd_level, cfg.zstd_level_min, cfg.zstd_level_max) == (None, -3, 6)  # 0 = adaptive
    assert cfg.link_rate_bytes_per_s == 5e8 and cfg.compress_workers == 3
    pinned = CodecConfig.from_settings(
        CodecSettings(zstd_level=4), link_rate_bytes_per_s=1e9, compress_workers=1
    )
    assert pinned.zstd_level == 4
    assert ChunkEncoder(pinned).levels.choose() == 4


# -- the encoder: "one chunk (any contiguous buffer) in, one self-describing frame out" ---------


def test_any_contiguous_buffer_is_a_chunk_and_a_strided_one_is_refused():
    words = np.arange(CHUNK // 4, dtype=np.uint32).reshape(64, -1)  # 2-D, 4-byte items
    f = ChunkEncoder(CodecConfig(link_rate_bytes_per_s=FAST_LINK)).encode(words)
    assert f.raw_len == CHUNK
    out = ChunkDecoder().decode(K.parse_header(f.header), bytes(f.payload))
    assert bytes(out) == words.tobytes()
    strided = np.arange(1024, dtype=np.uint8)[::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        ChunkEncoder().encode(strided)
    with pytest.raises(ValueError, match="C-contiguous"):
        ChunkDecoder().decode(K.parse_header(f.header), strided)


def test_frame_buffers_are_the_header_and_the_callers_payload_unjoined():
    data = bytearray(rng_bytes(CHUNK, 3))
    f = ChunkEncoder(CodecConfig(link_rate_bytes_per_s=FAST_LINK)).encode(data, offset=CHUNK, transfer_id=5)
    header, payload = f.buffers()
    assert header is f.header and len(header) == C.HEADER_SIZE
    assert isinstance(payload, memoryview) and payload.obj is data  # raw travels as a view, not a copy
    assert f.wire_len == C.HEADER_SIZE + CHUNK == len(f.tobytes())
    assert f.tobytes() == header + bytes(data)
    h = K.parse_header(header)
    assert (h.offset, h.transfer_id, h.raw_len, h.enc_len) == (CHUNK, 5, CHUNK, CHUNK)


def test_a_chunk_over_the_frame_limit_is_refused_before_anything_is_hashed_or_counted():
    metrics = CodecMetrics()
    enc = ChunkEncoder(metrics=metrics)
    with pytest.raises(LocalProtocolError, match="exceeds the maximum") as ei:
        enc.encode(np.zeros(C.MAX_RAW_LEN + 1, np.uint8))
    assert ei.value.code == C.ERR_BAD_LENGTH
    assert metrics.snapshot()["encode"] == {}
    assert enc.busy == 0  # the slot is given back on the error path
    assert enc.encode(b"\0" * 4096).codec == C.CODEC_ZERO  # and the encoder still works


def test_a_delta_needs_a_baseline_of_the_chunks_size_and_a_real_digest():
    chunk = rng_bytes(8192)
    enc = ChunkEncoder()
    with pytest.raises(ValueError, match="baseline chunk has 4096 bytes, chunk has 8192"):
        enc.encode(chunk, base=chunk[:4096], base_digest=DIGEST)
    for bad in (None, DIGEST[:8], C.ZERO_DIGEST):
        with pytest.raises(ValueError, match="16-byte xxh3-128 digest"):
            enc.encode(chunk, base=chunk, base_digest=bad)


def test_an_all_zero_chunk_is_codec_zero_even_with_a_baseline():
    """Rule 1 comes before rule 2: zeros cost nothing, whatever the baseline."""
    base = rng_bytes(8192)
    f = ChunkEncoder().encode(bytes(8192), base=base, base_digest=DIGEST)
    assert f.codec == C.CODEC_ZERO and f.enc_len == 0
    h = K.parse_header(f.header)
    assert h.base_digest == C.ZERO_DIGEST  # no delta: the receiver needs no baseline
    assert bytes(ChunkDecoder().decode(h, b"")) == bytes(8192)


def test_pages_mode_compresses_the_dirty_pages_when_it_pays():
    theirs = vm_image(CHUNK, seed=21, zero=0.0, text=1.0)
    mine = dirty_version(theirs, fraction=0.25, seed=22)
    enc = ChunkEncoder(CodecConfig(link_rate_bytes_per_s=SLOW_LINK))
    f = enc.encode_pages(mine, K.page_hashes(theirs), DIGEST, offset=CHUNK, last=True)
    assert f.codec == C.CODEC_PAGES_ZSTD
    h = K.parse_header(f.header)
    assert h.base_digest == DIGEST and h.flags & C.FLAG_LAST and h.offset == CHUNK
    out = ChunkDecoder().decode(h, bytes(f.payload), base=theirs)
    assert bytes(out) == mine.tobytes()


def test_pages_mode_sends_nothing_for_an_identical_chunk_and_needs_the_peers_digest():
    theirs = vm_image(CHUNK, seed=23)
    enc = ChunkEncoder(CodecConfig(link_rate_bytes_per_s=SLOW_LINK))
    f = enc.encode_pages(theirs.copy(), K.page_hashes(theirs), DIGEST)
    assert f.codec == C.CODEC_PAGES and f.enc_len == 0
    assert bytes(ChunkDecoder().decode(K.parse_header(f.header), b"", base=theirs)) == theirs.tobytes()
    for bad in (DIGEST[:15], C.ZERO_DIGEST):
        with pytest.raises(ValueError, match="16-byte digest"):
            enc.encode_pages(theirs, K.page_hashes(theirs), bad)


def test_at_most_compress_workers_encodes_run_at_once():
    import threading

    enc = ChunkEncoder(CodecConfig(zstd_level=1, compress_workers=2))
    chunk = text_corpus(CHUNK, np.random.default_rng(5)).tobytes()
    barrier = threading.Barrier(6)

    def work() -> None:
        barrier.wait()
        for _ in range(5):
            enc.encode(chunk)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert 1 <= enc.peak_concurrent <= 2 and enc.busy == 0
    assert enc.metrics.snapshot()["encode"]["zstd"]["frames"] == 30


# -- the decoder: "dispatches on the header's codec", "any malformed input raises" ------------


def test_the_decoder_takes_data_frames_only():
    hdr = K.parse_header(K.pack_header(C.FRAME_ACK, C.CODEC_RAW, 0, 1, 0, 0, 0))
    with pytest.raises(ValueError, match="not a data frame"):
        ChunkDecoder().decode(hdr, b"")


def test_a_read_only_output_buffer_is_refused_before_it_is_written():
    data = rng_bytes(4096)
    h = data_header(C.CODEC_RAW, data, data)
    with pytest.raises(ValueError, match="read-only"):
        ChunkDecoder().decode(h, data, out=bytes(4096))


def test_a_baseline_of_the_wrong_size_is_a_caller_error_not_the_peers():
    old = vm_image(CHUNK, seed=31)
    new = dirty_version(old, fraction=0.05, seed=32)
    f = ChunkEncoder().encode(new, base=old, base_digest=DIGEST)
    assert f.codec in C.DELTA_CODECS
    metrics = CodecMetrics()
    with pytest.raises(ValueError, match=f"baseline chunk has {CHUNK // 2} bytes, header says {CHUNK}"):
        ChunkDecoder(metrics=metrics).decode(
            K.parse_header(f.header), bytes(f.payload), base=old[: CHUNK // 2]
        )
    snap = metrics.snapshot()
    assert snap["malformed_total"] == 0 and snap["checksum_failures_total"] == 0


def test_a_zstd_wrapped_empty_sparse_payload_is_malformed_and_counted():
    """The header rules refuse an empty CODEC_SPARSE payload; zstd must not smuggle one past them."""
    raw = bytes(8192)
    payload = zstandard.ZstdCompressor(write_content_size=True).compress(b"")
    metrics = CodecMetrics()
    with pytest.raises(RemoteProtocolError, match="empty sparse payload") as ei:
        ChunkDecoder(metrics=metrics).decode(data_header(C.CODEC_SPARSE_ZSTD, raw, payload), payload)
    assert ei.value.code == C.ERR_MALFORMED and not isinstance(ei.value, IntegrityError)
    snap = metrics.snapshot()
    assert (snap["malformed_total"], snap["checksum_failures_total"], snap["decode"]) == (1, 0, {})


def test_decoding_into_a_dirty_buffer_clears_what_the_frame_does_not_cover():
    """ZERO and SPARSE start from zeros: a reused output buffer must not leak its old bytes."""
    img = vm_image(CHUNK, seed=41, zero=0.6, text=0.0)
    enc = ChunkEncoder(CodecConfig(link_rate_bytes_per_s=FAST_LINK))
    sparse = enc.encode(img)
    zero = enc.encode(bytes(CHUNK))
    assert (sparse.codec, zero.codec) == (C.CODEC_SPARSE, C.CODEC_ZERO)
    for f, want in ((sparse, img.tobytes()), (zero, bytes(CHUNK))):
        out = bytearray(b"\xa5" * CHUNK)
        ChunkDecoder().decode(K.parse_header(f.header), bytes(f.payload), out=out)
        assert bytes(out) == want


def test_failures_are_counted_by_kind_and_successes_by_codec():
    data = rng_bytes(4096, 7)
    metrics = CodecMetrics()
    dec = ChunkDecoder(metrics=metrics)
    good = data_header(C.CODEC_RAW, data, data)
    dec.decode(good, data)
    with pytest.raises(IntegrityError):
        dec.decode(good, rng_bytes(4096, 8))
    with pytest.raises(RemoteProtocolError):
        dec.decode(data_header(C.CODEC_ZSTD, data, b"not zstd at all"), b"not zstd at all")
    snap = metrics.snapshot()
    assert snap["checksum_failures_total"] == 1 and snap["malformed_total"] == 1
    assert snap["decode"]["raw"]["frames"] == 1 and snap["decode"]["raw"]["bytes_raw"] == 4096


# -- compress.py: the probe, the level controller, the dictionaries ----------------------------


def test_the_probe_looks_at_all_of_a_small_buffer_and_calls_nothing_incompressible():
    assert looks_incompressible(rng_bytes(600))  # smaller than the samples: probed whole
    assert not looks_incompressible(b"ab" * 300)
    assert not looks_incompressible(b"")  # nothing to compress is not "incompressible"
    assert not looks_incompressible(rng_bytes(600), threshold=1.5)  # the threshold decides


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"workers": 0}, "workers must be >= 1"),
        ({"fixed_level": 23}, r"zstd level 23 outside"),
        ({"fixed_level": -131073}, r"outside \[-131072, 22\]"),
        ({"probe_every": 1}, "probe_every must be >= 2"),
    ],
)
def test_level_controller_refuses_bad_settings(kw, match):
    with pytest.raises(ConfigError, match=match):
        LevelController(1e9, **kw)


def test_probes_stay_within_the_level_table():
    """A probe from the fastest level has no faster neighbour: it must not wrap to the slowest."""
    lc = LevelController(1e9, probe_every=2)  # -7 is the priors' best at 1 GB/s
    assert lc.best() == -7
    picks = [lc.choose() for _ in range(8)]
    assert picks == [-7, -3, -7, -7, -7, -3, -7, -7]  # up-probes to -3, down-probes stay put
    # from raw (a link nothing keeps up with) an up-probe tries the fastest level, a down-probe stays raw
    raw = LevelController(1e11, probe_every=2)
    assert [raw.choose() for _ in range(4)] == [None, -7, None, None]


def test_observing_nothing_changes_nothing():
    lc = LevelController(3e8)
    before = lc.snapshot()
    lc.observe(1, 0, 0, 0.0)
    assert lc.used == {} and lc.snapshot() == before
    lc.observe(42, 1000, 100, 0.001)  # outside the table: counted, not estimated
    assert lc.used == {42: 1} and lc.snapshot()["levels"] == before["levels"]
    assert lc.snapshot()["chosen"] == lc.best()
    assert LevelController(3e8, fixed_level=5).snapshot()["chosen"] == 5


def test_dictionary_size_and_id_rules():
    with pytest.raises(ConfigError, match="between 256"):
        dict_train("vm", [b"x" * 100] * 10, 255)
    samples = [text_corpus(2048, np.random.default_rng(i)).tobytes() for i in range(64)]
    zd = dict_train("cfg", samples, 4096).data
    # the id on the wire is zstd's dictionary id; 0 means "no dictionary" and is refused
    with pytest.raises(DictionaryError, match="id 0"):
        Dictionary.of(zd[:4] + b"\0\0\0\0" + zd[8:])


def test_a_zstd_training_failure_is_a_config_error_that_says_what_to_do(monkeypatch):
    def fail(*a, **kw):
        raise zstandard.ZstdError("Src size is incorrect")

    monkeypatch.setattr(dictionaries_mod.zstandard, "train_dictionary", fail)
    with pytest.raises(ConfigError, match="too few or too alike") as ei:
        dict_train("vm", [b"y" * 1024] * 8, 1024)
    assert "Src size is incorrect" in str(ei.value) and ei.value.__cause__ is None
