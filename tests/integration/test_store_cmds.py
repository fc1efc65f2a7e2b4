"""`dwcp ls | rm | gc | du` on a node's stores: through its daemon (with the catalog's holders and
drops), and on its data directory when no daemon runs."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from dwcp._testbase.daemons import Cluster
from dwcp.cli.main import main as cli
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.digest import object_digest
from dwcp.transport.sender import Sender


def _run(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(list(argv))
    return rc, capsys.readouterr().out


def test_ls_rm_gc_du_through_the_daemon_and_without_it(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    c = Cluster(str(tmp_path / "d"), 3)
    try:
        c.wait(c.leader, what="a leader")
        cfg = os.path.join(c.root, "c0.toml")
        snd = Sender(TransportConfig(chunk_size_bytes=1 << 20), SecurityConfig(plaintext=True), node_id="w")
        v1 = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8)
        v2 = np.random.default_rng(2).integers(0, 256, 1 << 20, dtype=np.uint8)
        for v in (v1, v2):
            snd.send(v, "127.0.0.1", c.ports["c0"], "vm/a")
        snd.send(v1, "127.0.0.1", c.ports["c0"], "other/b")
        d1, d2 = object_digest(v1).hex(), object_digest(v2).hex()
        c.wait(lambda: "vm/a" in ((c.status("c1") or {}).get("catalog") or {}), what="the catalog")
        rc, out = _run(capsys, "ls", "vm/", "--config", cfg, "--json")
        (k,) = json.loads(out)["keys"]
        assert rc == 0 and k["key"] == "vm/a" and [v["digest"] for v in k["versions"]] == [d2, d1]
        assert k["versions"][0]["latest"] and k["holders"] == ["c0"]
        rc, out = _run(capsys, "ls", "--config", cfg)
        assert rc == 0 and "vm/a" in out and "other/b" in out and d2 + " *" in out and "2 keys" in out
        rc, out = _run(capsys, "du", "--config", cfg, "--json")
        du = json.loads(out)["objects"]
        assert rc == 0 and 3 << 20 <= du["bytes"] < (3 << 20) + 4096 and du["files"] >= 3  # + LATEST files
        # rm one version: the catalog stops listing this node as its holder
        rc, out = _run(capsys, "rm", "vm/a", "--version", d2, "--config", cfg)
        assert rc == 0 and f"removed 1 version(s) of vm/a: {d2}" in out
        c.wait(lambda: ((c.status("c1") or {}).get("catalog") or {}).get("vm/a", {}).get("holders") == [],
               what="the drop in the catalog")  # fmt: skip
        rc, out = _run(capsys, "rm", "vm/nope", "--config", cfg)
        assert rc == 3
        # gc: an abandoned partial older than partial_max_age_s goes; a dry run says so first
        part = os.path.join(c.root, "c0", "partial", "x.state")
        open(part, "w").close()
        old = time.time() - 30 * 86400
        os.utime(part, (old, old))
        rc, out = _run(capsys, "gc", "--dry-run", "--config", cfg)
        assert rc == 0 and "would remove 1 partial" in out and os.path.exists(part)
        rc, out = _run(capsys, "gc", "--config", cfg, "--json")
        assert rc == 0 and len(json.loads(out)["removed"]["partial"]) == 1 and not os.path.exists(part)
    finally:
        c.close()
    # no daemon: the same, on the data directory
    rc, out = _run(capsys, "ls", "--config", cfg, "--json")
    assert rc == 0 and [k["key"] for k in json.loads(out)["keys"]] == ["other/b", "vm/a"]
    rc, out = _run(capsys, "rm", "other/b", "--config", cfg)
    assert rc == 0 and "removed 1 version(s) of other/b" in out
    rc, out = _run(capsys, "du", "--config", cfg)
    assert rc == 0 and "objects" in out and "total" in out
