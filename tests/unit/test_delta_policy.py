"""When a send must go full: the [codec] delta settings over a key's record, time passed in."""

from __future__ import annotations

import pytest

from dwcp.config import CodecSettings, from_dict
from dwcp.errors import ConfigError
from dwcp.transport.sender import full_refresh_reason

CODEC = CodecSettings(max_delta_chain=3, baseline_refresh_s=60.0)


def test_a_delta_may_go_within_the_chain_and_the_age():
    assert full_refresh_reason(CODEC, {"deltas": 2, "full_at": 100.0}, 159.9) is None


@pytest.mark.parametrize("record, now, why", [
    ({"deltas": 3, "full_at": 100.0}, 101.0, "codec.max_delta_chain = 3: 3 non-full sends since the last full one"),
    ({"deltas": 0, "full_at": 100.0}, 160.0, "codec.baseline_refresh_s = 60: the last full send began 60 s ago"),
    ({"deltas": 0, "full_at": 100.0}, 99.0, "codec.baseline_refresh_s = 60: the last full send began -1 s ago"),
    (None, 100.0, "no full send of this key recorded"),
    ({"deltas": True, "full_at": 100.0}, 100.0, "no full send of this key recorded"),
    ({"deltas": -1, "full_at": 100.0}, 100.0, "no full send of this key recorded"),
    ({"deltas": 0, "full_at": "yesterday"}, 100.0, "no full send of this key recorded"),
])  # fmt: skip
def test_a_full_send_is_due_and_says_why(record, now, why):
    assert full_refresh_reason(CODEC, record, now) == why


def test_delta_false_wins_and_an_untracked_sender_checks_nothing_else():
    off = CodecSettings(delta=False)
    assert full_refresh_reason(off, {"deltas": 0, "full_at": 0.0}, 1.0) == "codec.delta = false"
    assert full_refresh_reason(off, None, 1.0, tracked=False) == "codec.delta = false"
    assert full_refresh_reason(CODEC, None, 1.0, tracked=False) is None
    assert (
        full_refresh_reason(CodecSettings(max_delta_chain=0), {"deltas": 0, "full_at": 0.0}, 1.0) is not None
    )


def test_zstd_level_bounds_reach_the_fast_levels_and_no_further():
    ok = from_dict({"security": {"plaintext": True}, "codec": {"zstd_level_min": -7, "zstd_level_max": -1}})
    assert ok.codec.fixed_level is None and CodecSettings(zstd_level=5).fixed_level == 5
    with pytest.raises(ConfigError, match="need -7 <= min <= max <= 22"):
        from_dict({"security": {"plaintext": True}, "codec": {"zstd_level_min": -8}})
    with pytest.raises(ConfigError, match="unknown setting"):
        from_dict({"security": {"plaintext": True}, "codec": {"dictionary_dir": ""}})
