"""dwcp as a library: dwcp.send, dwcp.fetch and dwcp.Daemon, as docs/api.md shows them."""

from __future__ import annotations

import numpy as np
import pytest

import dwcp
from dwcp.config import from_dict
from dwcp.digest import object_digest


def test_send_fetch_and_a_daemon_in_process(tmp_path):
    cfg = from_dict({"node": {"id": "rx"}, "security": {"plaintext": True}, "storage": {"data_dir": str(tmp_path / "rx")},
                     "listen": {"host": "127.0.0.1", "data_port": 0, "metrics_port": -1}})  # fmt: skip
    data = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8)
    with dwcp.Daemon(cfg) as d:
        host, port = d.address
        r = dwcp.send(data, f"{host}:{port}", "vm/api")  # a buffer, plaintext defaults
        assert r["verified"] and r["digest"] == object_digest(data).hex()
        src = tmp_path / "v2"
        v2 = data.copy()
        v2[:4096] ^= 1
        v2.tofile(src)
        r2 = dwcp.send(str(src), f"{host}:{port}", "vm/api")  # a path
        assert r2["digest"] == object_digest(v2).hex() and d.status()["keys"] == 1
        got = dwcp.fetch("vm/api", tmp_path / "out", source=f"{host}:{port}")
        assert got["verified"] and (tmp_path / "out").read_bytes() == v2.tobytes()
        old = dwcp.fetch("vm/api", tmp_path / "old", source=f"{host}:{port}", version=r["digest"])
        assert old["digest"] == r["digest"] and (tmp_path / "old").read_bytes() == data.tobytes()
    with pytest.raises(dwcp.ConfigError, match="a cluster target needs a config with \\[cluster\\] peers"):
        dwcp.send(b"x", "cluster", "k")
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[security]\nplaintext = true\n[storage]\ndata_dir = "rel"\n')
    with pytest.raises(dwcp.ConfigError, match="must be an absolute path"):
        dwcp.load_config(cfg_file)
