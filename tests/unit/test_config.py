"""The configuration: every problem reported, the example complete, reloads planned."""

from __future__ import annotations

import os
import tomllib
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp.config import LIVE, Config, from_dict, load_toml, merge_live, reload_plan
from dwcp.errors import ConfigError

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "systemd", "dwcp.toml.example")
PLAIN = {"security": {"plaintext": True}}


def test_every_problem_is_reported_once_with_its_place():
    with pytest.raises(ConfigError) as ei:
        from_dict({
            "node": {"id": "", "latitude_deg": 91},
            "listen": {"data_port": "7700", "metrics_port": -2},
            "transport": {"min_streams": 4, "max_streams": 2, "chunk_size_bytes": 5000, "bogus": 1,
                          "window_chunks": True},
            "health": {"error_rate_degraded": 0.1, "error_rate_unhealthy": 0.05},
            "logging": {"level": "loud"},
            "nope": {},
        })  # fmt: skip
    probs = ei.value.problems
    expected = [
        "node.id", "node.latitude_deg", "listen.data_port: expected int", "listen.metrics_port",
        "transport.bogus: unknown setting", "transport.window_chunks: expected int, got bool",
        "transport.min_streams", "transport.chunk_size_bytes", "health.error_rate_degraded",
        "logging.level", "nope: unknown section", "security.ca_cert/cert/key",
    ]  # fmt: skip
    for e in expected:
        assert sum(p.startswith(e) for p in probs) == 1, (e, probs)
    assert len(probs) == len(expected)
    assert str(ei.value) == "\n".join(probs)


def test_defaults_need_only_an_explicit_security_choice():
    cfg = from_dict(PLAIN)
    assert cfg == Config(security=cfg.security)
    with pytest.raises(ConfigError, match="plaintext = true"):
        from_dict({})


def test_example_documents_every_field_with_its_default():
    if not os.path.exists(EXAMPLE):
        pytest.skip("systemd/dwcp.toml.example is not beside the tests")
    data = tomllib.loads(open(EXAMPLE).read())
    cfg = from_dict(data)  # the example itself is valid (with TLS)
    site_specific = {("node", "id"), ("security", "ca_cert"), ("security", "cert"), ("security", "key")}
    for sec in fields(Config):
        assert sec.name in data, f"[{sec.name}] is missing from the example"
        default = sec.default_factory() if sec.name != "security" else None  # type: ignore[misc]
        for f in fields(getattr(cfg, sec.name)):
            assert f.name in data[sec.name], f"{sec.name}.{f.name} is not documented in the example"
            if default is not None and (sec.name, f.name) not in site_specific:
                assert getattr(cfg, sec.name).__getattribute__(f.name) == getattr(default, f.name), (
                    sec.name,
                    f.name,
                )


def test_load_toml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(str(bad))
    two = tmp_path / "two.toml"
    two.write_text('[security]\nplaintext = true\n[transport]\nmin_streams = 0\nmax_streams = "x"\n')
    with pytest.raises(ConfigError) as ei:
        load_toml(str(two))
    probs = ei.value.problems
    assert len(probs) == 2 and all(p.startswith(f"{two}: transport.") for p in probs), probs
    assert "max_streams: expected int" in probs[0] and "min_streams 0" in probs[1]


def test_reload_plan_splits_live_from_restart():
    old = from_dict({**PLAIN, "transport": {"rate_limit_bytes_per_s": 1e6}})
    new = from_dict({"security": {"plaintext": True}, "transport": {"rate_limit_bytes_per_s": 5e6, "max_streams": 8},
                     "listen": {"data_port": 7800}, "logging": {"level": "debug"},
                     "health": {"error_window_s": 30.0}})  # fmt: skip
    live, restart = reload_plan(old, new)
    assert sorted(x.split(":")[0] for x in live) == [
        "health.error_window_s",
        "logging.level",
        "transport.max_streams",
        "transport.rate_limit_bytes_per_s",
    ]
    assert restart == ["listen.data_port: 7700 -> 7800"]
    running = merge_live(old, new)
    assert running.transport.rate_limit_bytes_per_s == 5e6 and running.transport.max_streams == 8
    assert running.listen.data_port == 7700 and running.logging.level == "debug"
    assert reload_plan(old, old) == ([], [])


def test_live_names_real_fields():
    for sec, names in LIVE.items():
        have = {f.name for f in fields(getattr(from_dict(PLAIN), sec))}
        assert names == {"*"} or names <= have, (sec, names - have)


_values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.integers(), max_size=2))  # fmt: skip
_keys = st.sampled_from(["id", "region", "data_port", "min_streams", "max_streams", "chunk_size_bytes",
                         "plaintext", "level", "zstd_level", "error_rate_degraded", "x", "latitude_deg"])  # fmt: skip
_sections = st.sampled_from(
    ["node", "listen", "security", "storage", "transport", "codec", "health", "logging", "zz"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_sections, st.one_of(st.dictionaries(_keys, _values, max_size=4), _values), max_size=5)
)
def test_any_document_gives_a_config_or_a_config_error(doc):
    try:
        cfg = from_dict(doc)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(cfg, Config)
