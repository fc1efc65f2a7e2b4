"""Chunk size from the path: the policy's rules and the path digest of a send report."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp._testbase.transfer import transfer_report
from dwcp.transport.chunking import MiB, PathStats, choose_chunk_size, path_stats_from_send

NOW = 1_800_000_000.0


def _ps(rtt_s=0.05, loss=0.0, rate=12.5e6, streams=8, at=NOW) -> PathStats:
    return PathStats(rtt_s=rtt_s, retrans_fraction=loss, stream_bytes_per_s=rate, streams=streams, at=at)


def test_no_record_or_a_stale_one_keeps_the_configured_size():
    assert choose_chunk_size(None, 4 * MiB, now=NOW)[0] == 4 * MiB
    size, why = choose_chunk_size(_ps(at=NOW - 8 * 86400), 4 * MiB, now=NOW)
    assert size == 4 * MiB and "too old" in why


def test_wan_path_at_1_gbit_gets_chunks_of_about_two_rtts_per_stream():
    # 1 Gbit/s over 8 streams at 50 ms: 15.6 MB/s per stream, 100 ms per chunk -> 1 MiB (2^20 <= 1.56e6)
    size, why = choose_chunk_size(_ps(rate=125e6 / 8), 4 * MiB, now=NOW)
    assert size == MiB and "100 ms per chunk" in why
    # fewer, faster streams on the same path: bigger chunks
    assert choose_chunk_size(_ps(rate=125e6 / 2), 4 * MiB, now=NOW)[0] == 4 * MiB


def test_a_lossy_path_halves_the_chunk_time():
    clean = choose_chunk_size(_ps(rate=80e6, loss=0.001), 4 * MiB, now=NOW)
    lossy = choose_chunk_size(_ps(rate=80e6, loss=0.02), 4 * MiB, now=NOW)
    assert lossy[0] == clean[0] // 2 and "lossy" in lossy[1] and "lossy" not in clean[1]


def test_a_rate_cap_bounds_the_chunk_which_is_the_caps_burst():
    # loopback measured 2 GB/s a stream: 16 MiB chunks, but under a 2 MiB/s cap a stream goes at 2 MiB/s
    size, why = choose_chunk_size(_ps(rtt_s=50e-6, rate=2e9, streams=2), 4 * MiB, now=NOW, rate_cap=2 * MiB)
    assert size == MiB and "cap" in why
    # 1 Gbit/s over 2 streams at 50 ms, capped at 40 MB/s: 100 ms at 40 MB/s -> 2 MiB (not 4)
    assert choose_chunk_size(_ps(rate=125e6 / 2), 4 * MiB, now=NOW, rate_cap=40e6)[0] == 2 * MiB
    # a cap above what the path does changes nothing
    assert choose_chunk_size(_ps(rate=125e6 / 2), 4 * MiB, now=NOW, rate_cap=1e9) == choose_chunk_size(
        _ps(rate=125e6 / 2), 4 * MiB, now=NOW
    )
    # no record: the default, unless it is more than 500 ms of the cap
    size, why = choose_chunk_size(None, 16 * MiB, now=NOW, rate_cap=4 * MiB)
    assert size == 2 * MiB and "cap" in why and "no earlier send" in why
    assert choose_chunk_size(None, 4 * MiB, now=NOW, rate_cap=100 * MiB)[0] == 4 * MiB
    assert choose_chunk_size(None, 4 * MiB, now=NOW, rate_cap=100e3)[0] == MiB  # never below the floor


def test_loopback_speeds_hit_the_ceiling_and_slow_links_the_floor():
    assert choose_chunk_size(_ps(rtt_s=50e-6, rate=2e9, streams=2), 4 * MiB, now=NOW)[0] == 16 * MiB
    assert choose_chunk_size(_ps(rtt_s=0.2, rate=100e3), 4 * MiB, now=NOW)[0] == MiB


@given(rtt=st.floats(0, 10), loss=st.floats(0, 1), rate=st.floats(0, 1e11), streams=st.integers(1, 256))
def test_always_a_power_of_two_in_bounds_and_monotone_in_rate(rtt, loss, rate, streams):
    size, _ = choose_chunk_size(_ps(rtt, loss, rate, streams), 4 * MiB, now=NOW)
    assert MiB <= size <= 16 * MiB and size & (size - 1) == 0
    faster, _ = choose_chunk_size(_ps(rtt, loss, rate * 2 + 1, streams), 4 * MiB, now=NOW)
    assert faster >= size
    lossier, _ = choose_chunk_size(_ps(rtt, min(1.0, loss + 0.01), rate, streams), 4 * MiB, now=NOW)
    assert lossier <= size


@pytest.mark.parametrize("bad", [{"rtt_s": -1}, {"retrans_fraction": float("nan")}, {"streams": 0},
                                 {"streams": 1.5}, {"stream_bytes_per_s": float("inf")}])  # fmt: skip
def test_path_stats_refuse_nonsense(bad):
    kw = {"rtt_s": 0.05, "retrans_fraction": 0.0, "stream_bytes_per_s": 1e6, "streams": 4, "at": NOW} | bad
    with pytest.raises(ValueError):
        PathStats(**kw)


# A send report recorded on the emulated WAN (perf/sla.py's testbed, 2026-12-02: 1 Gbit/s, 50 ms RTT, 1% loss
# each way, bbr, 64 000-byte TUN MTU, `dwcp send --streams 8 --chunk-size 4M --json` of 512 MiB): the fields
# the path digest reads, the others made up.
RECORDED_1PCT = transfer_report(
    wire_bytes=536879104, seconds=5.018681244999243, chunks_sent=128, rtt_ms=51.297,
    streams={"initial": 8, "max": 8, "final": 8},
    tcp_info=(
        {"stream": 4, "bytes_sent": 67110174, "rtt_us": 65322, "total_retrans": 17, "bytes_retrans": 1087116},
        {"stream": 3, "bytes_sent": 71304542, "rtt_us": 55784, "total_retrans": 7, "bytes_retrans": 447636},
        {"stream": 0, "bytes_sent": 71304542, "rtt_us": 54479, "total_retrans": 15, "bytes_retrans": 959220},
        {"stream": 2, "bytes_sent": 71304542, "rtt_us": 63423, "total_retrans": 3, "bytes_retrans": 191844},
        {"stream": 5, "bytes_sent": 50332702, "rtt_us": 55006, "total_retrans": 12, "bytes_retrans": 671454},
        {"stream": 1, "bytes_sent": 67110174, "rtt_us": 67648, "total_retrans": 11, "bytes_retrans": 688632},
        {"stream": 6, "bytes_sent": 67110174, "rtt_us": 63047, "total_retrans": 8, "bytes_retrans": 511584},
        {"stream": 7, "bytes_sent": 71304542, "rtt_us": 58547, "total_retrans": 9, "bytes_retrans": 575532},
    ),
)  # fmt: skip
SENT = sum(i["bytes_sent"] for i in RECORDED_1PCT.tcp_info)


def test_path_digest_of_a_recorded_lossy_send_and_the_size_it_leads_to():
    ps = path_stats_from_send(RECORDED_1PCT, now=NOW)
    assert ps is not None
    assert ps.rtt_s == 0.063047  # the (upper) median stream smoothed RTT: the relay queue adds to the 50 ms
    assert ps.retrans_fraction == pytest.approx(
        sum(i["bytes_retrans"] for i in RECORDED_1PCT.tcp_info) / SENT
    )
    assert 0.009 < ps.retrans_fraction < 0.010  # ~1% of what was sent went twice
    assert ps.streams == 8 and ps.stream_bytes_per_s == pytest.approx(536879104 / 5.018681244999243 / 8)
    size, why = choose_chunk_size(ps, 4 * MiB, now=NOW)
    assert size == MiB and "lossy" in why  # 13.4 MB/s per stream x 63 ms = 0.84 MB: the 1 MiB floor


def test_path_digest_falls_back_to_segments_on_old_kernels_and_skips_tiny_sends():
    old = replace(RECORDED_1PCT, tcp_info=tuple({k: v for k, v in i.items() if k != "bytes_retrans"}
                                                for i in RECORDED_1PCT.tcp_info))  # fmt: skip
    ps = path_stats_from_send(old, now=NOW)
    # segments at a typical 1448-byte MSS: this testbed's 64 kB MTU makes that an underestimate
    assert ps is not None and ps.retrans_fraction == pytest.approx(82 * 1448 / SENT)
    assert path_stats_from_send(replace(RECORDED_1PCT, chunks_sent=2), now=NOW) is None
    assert path_stats_from_send(replace(RECORDED_1PCT, tcp_info=()), now=NOW) is None
