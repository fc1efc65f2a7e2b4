"""The command line as a user runs it: the demo, certs, send/fetch/status, errors."""

from __future__ import annotations

import json
import subprocess
import sys

from dwcp.cli.demo import same_dwcp_env


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
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    assert "Traceback" not in r.stderr
    r = dwcp("send", "/nonexistent", "--to", "127.0.0.1:1", "--key", "k", "--plaintext", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.startswith("dwcp send: error:")
    r = dwcp("send", __file__, "--to", "127.0.0.1:1", "--key", "k", cwd=tmp_path)
    assert r.returncode == 1 and "TLS identity" in r.stderr
    r = dwcp("status", "--socket", str(tmp_path / "none.sock"), cwd=tmp_path)
    assert r.returncode == 1 and "no daemon" in r.stderr
