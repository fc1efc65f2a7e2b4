"""The command line as a user runs it: the demo, certs, send/fetch/status, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dwcp.cli.demo import same_dwcp_env
from dwcp.digest import object_digest


def dwcp(*args, cwd, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "dwcp", *args], capture_output=True, text=True, cwd=cwd,
                          env=same_dwcp_env(env), timeout=timeout)  # fmt: skip


def test_demo_small(tmp_path):
    import os

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    r = dwcp("demo", "--size", "16M", "--json", cwd=tmp_path, env={**os.environ, "TMPDIR": str(scratch)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    v1, v2 = out["sends"]
    assert (v1["mode"], v2["mode"]) == ("full", "delta")
    assert v1["verified"] and v2["verified"] and v1["tls"]
    assert v2["wire_bytes"] * 100 < v2["size"]
    assert not list(scratch.iterdir()), "the demo cleans up after itself"


def test_certs_and_errors_are_one_line(tmp_path):
    r = dwcp("certs", "init", "--dir", str(tmp_path / "ca"), "--json", cwd=tmp_path)
    assert r.returncode == 0 and "ca_key" in json.loads(r.stdout)
    r = dwcp("certs", "init", "--dir", str(tmp_path / "ca"), cwd=tmp_path)
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "already exists" in r.stderr  # EXIT_CONFIG
    assert "Traceback" not in r.stderr
    r = dwcp("send", "/nonexistent", "--to", "127.0.0.1:1", "--key", "k", "--plaintext", cwd=tmp_path)
    assert r.returncode == 7 and "Traceback" not in r.stderr and r.stderr.startswith("dwcp send: error:")
    r = dwcp("send", __file__, "--to", "127.0.0.1:1", "--key", "k", cwd=tmp_path)
    assert r.returncode == 3 and "TLS identity" in r.stderr
    r = dwcp("status", "--socket", str(tmp_path / "none.sock"), cwd=tmp_path)
    assert r.returncode == 4 and "no daemon" in r.stderr  # EXIT_NETWORK


# what `dwcp send --json` prints, key by key and in order: scripts read it, so a change here is a change of
# interface (TransferReport.to_json)
SEND_JSON_KEYS = [
    "key", "to", "mode", "size", "digest", "verified", "wire_bytes", "ratio", "seconds", "throughput_bytes_per_s",
    "chunks", "chunk_size", "chunk_size_reason", "chunks_sent", "chunks_resent", "resumed_chunks", "stream_errors",
    "streams", "rtt_ms", "tls", "socket", "chunk_latency_ms", "nic", "relayed", "tcp_info", "refresh",
    "delta_chain", "baseline", "dictionary", "codec", "path",
]  # fmt: skip
SEND_JSON_STREAMS_KEYS = ["initial", "max", "final", "auto", "decisions", "samples"]
SEND_JSON_CODEC_KEYS = ["zstd_level", "zstd_levels_used", "compress_workers", "encodes_at_once_max"]


def test_send_json_keys_are_pinned(tmp_path):

    from dwcp._testbase.transfer import server_config
    from dwcp.transport.server import DataServer

    data = os.urandom(3 << 20)
    (tmp_path / "obj").write_bytes(data)
    with DataServer(server_config(tmp_path / "rx")) as srv:
        to = "{}:{}".format(*srv.address)
        argv = ["send", str(tmp_path / "obj"), "--to", to, "--key", "cli/k", "--plaintext", "--streams", "2",
                "--chunk-size", "1M", "--state-dir", str(tmp_path / "sent")]  # fmt: skip
        r = dwcp(*argv, "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert list(out) == SEND_JSON_KEYS
        assert list(out["streams"]) == SEND_JSON_STREAMS_KEYS and list(out["codec"]) == SEND_JSON_CODEC_KEYS
        assert (out["key"], out["to"], out["mode"], out["size"], out["verified"]) == (
            "cli/k",
            to,
            "full",
            3 << 20,
            True,
        )
        assert (
            out["digest"] == object_digest(data).hex() and out["chunks"] == 3 and out["chunk_size"] == 1 << 20
        )
        assert out["streams"]["initial"] == 2 and out["streams"]["auto"] is False and out["delta_chain"] == 0
        assert isinstance(out["stream_errors"], list) and isinstance(out["tcp_info"], list)
        # and the words a person reads
        r = dwcp(*argv, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"sent cli/k -> {to}: ") and out["digest"] + " verified" in r.stdout
