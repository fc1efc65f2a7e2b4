"""Operating the daemon for real: systemd notify, SIGHUP reload (live, restart-only
and rejected changes), SIGTERM drain with checkpoint, and `dwcp check-config`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dwcp.cli.demo import same_dwcp_env
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.daemon.control import request
from dwcp.transport.sender import Sender, TransferError


def _toml(data_dir: str, port: int = 0, extra: str = "") -> str:
    return (f'[node]\nid = "rx"\n[listen]\nhost = "127.0.0.1"\ndata_port = {port}\nmetrics_port = -1\n'
            f'[security]\nplaintext = true\n[storage]\ndata_dir = "{data_dir}"\n{extra}')  # fmt: skip


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: collects datagrams."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[dict[str, str]] = []
        self._stop = False
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            fields["_t"] = str(time.monotonic())
            self.messages.append(fields)

    def wait_for(self, key: str, value: str | None = None, after: int = 0, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, m in enumerate(self.messages[after:], after):
                if key in m and (value is None or m[key] == value):
                    return i
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} from the daemon; got {self.messages[after:]}")

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def daemon(tmp_path):
    """A `dwcp daemon` process under a fake systemd with a 0.6 s watchdog."""
    data = str(tmp_path / "rx")
    cfg = tmp_path / "rx.toml"
    cfg.write_text(_toml(data, extra="[transport]\nrate_limit_bytes_per_s = 1000000.0\n"))
    sd = FakeSystemd(str(tmp_path / "notify.sock"))
    env = same_dwcp_env({**os.environ, "NOTIFY_SOCKET": sd.path, "WATCHDOG_USEC": "600000"})
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "rx.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dwcp", "daemon", "--config", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))  # fmt: skip
    log.close()
    try:
        sd.wait_for("READY", "1")
        st = request(os.path.join(data, "control.sock"), {"op": "status"}, timeout_s=5)
        yield {"proc": proc, "sd": sd, "cfg": cfg, "data": data, "sock": os.path.join(data, "control.sock"),
               "port": int(st["data_port"].rsplit(":", 1)[1]), "log": tmp_path / "rx.log"}  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        sd.close()


def test_ready_only_when_serving_then_watchdog_and_status(daemon):
    sd = daemon["sd"]
    ready = sd.wait_for("READY", "1")
    # READY came after the data port was listening: a status request right after READY succeeds
    assert request(daemon["sock"], {"op": "status"}, timeout_s=5)["ok"]
    assert "serving 127.0.0.1:" in sd.messages[ready]["STATUS"]
    first = sd.wait_for("WATCHDOG", "1", after=ready)
    second = sd.wait_for("WATCHDOG", "1", after=first + 1)
    gap = float(sd.messages[second]["_t"]) - float(sd.messages[first]["_t"])
    assert 0.15 < gap < 0.6, gap  # half of WatchdogSec (0.3 s), with slack for a loaded machine


def test_sighup_applies_live_reports_restart_and_rejects_bad_config(daemon):
    sd, cfg = daemon["sd"], daemon["cfg"]
    cfg.write_text(_toml(daemon["data"], port=1, extra="[transport]\nrate_limit_bytes_per_s = 5000000.0\n"
                                                     "max_streams = 8\n[logging]\nlevel = \"debug\"\n"))  # fmt: skip
    n = len(sd.messages)
    daemon["proc"].send_signal(signal.SIGHUP)
    i = sd.wait_for("RELOADING", "1", after=n)
    assert int(sd.messages[i]["MONOTONIC_USEC"]) > 0
    sd.wait_for("READY", "1", after=i)
    st = request(daemon["sock"], {"op": "status"}, timeout_s=5)
    assert st["reloads_ok"] == 1 and st["data_port"].endswith(
        f":{daemon['port']}"
    )  # the port needs a restart
    # the control API reload says what it did (nothing changed since the SIGHUP)
    r = request(daemon["sock"], {"op": "reload"}, timeout_s=10)
    assert r == {"ok": True, "applied": [], "needs_restart": ["listen.data_port: 0 -> 1"]}
    log = daemon["log"].read_text()
    assert "transport.rate_limit_bytes_per_s: 1000000.0 -> 5000000.0" in log
    assert "listen.data_port: 0 -> 1 needs a restart" in log

    # a bad file is rejected whole; the daemon keeps serving with the old config
    cfg.write_text(_toml(daemon["data"], extra="[transport]\nmin_streams = 9\nmax_streams = 2\nbogus = 1\n"))
    out = subprocess.run([sys.executable, "-m", "dwcp", "reload", "--socket", daemon["sock"]], capture_output=True,
                         text=True, env=same_dwcp_env(), cwd=str(daemon["cfg"].parent))  # fmt: skip
    assert out.returncode == 1
    assert "config rejected" in out.stderr and "transport.bogus: unknown setting" in out.stderr
    assert "min_streams 9 / max_streams 2" in out.stderr
    st = request(daemon["sock"], {"op": "status"}, timeout_s=5)
    assert st["ok"] and st["reloads_rejected"] == 1 and daemon["proc"].poll() is None


def test_sigterm_drains_then_checkpoints_for_resume(daemon, tmp_path):
    # the daemon caps nothing on receive; the sender is slow on purpose (2 MB/s) so the
    # transfer is running when SIGTERM arrives, and outlasts drain_timeout_s (1 s)
    daemon["cfg"].write_text(_toml(daemon["data"], extra="[transport]\ndrain_timeout_s = 1.0\n"))
    daemon["proc"].send_signal(signal.SIGHUP)
    daemon["sd"].wait_for("RELOADING", "1")
    data = np.random.default_rng(7).integers(0, 256, 8 << 20, dtype=np.uint8)
    tp = TransportConfig(chunk_size_bytes=1 << 20, stall_timeout_s=5.0, max_stream_reconnects=1)
    err: list[BaseException] = []

    def send():
        try:
            Sender(tp, SecurityConfig(plaintext=True)).send(data, "127.0.0.1", daemon["port"], "ops/drain",
                                                            streams=1, rate_limit_bytes_per_s=2e6)  # fmt: skip
        except BaseException as exc:
            err.append(exc)

    t = threading.Thread(target=send)
    t.start()
    deadline = time.monotonic() + 10
    while not request(daemon["sock"], {"op": "status"}, timeout_s=5)["transfers"]:
        assert time.monotonic() < deadline, "the transfer never started"
        time.sleep(0.05)
    n = len(daemon["sd"].messages)
    t0 = time.monotonic()
    daemon["proc"].send_signal(signal.SIGTERM)
    daemon["sd"].wait_for("STOPPING", "1", after=n)
    assert daemon["proc"].wait(15) == 0
    assert 0.9 < time.monotonic() - t0 < 10  # waited for the drain timeout, then stopped
    t.join(30)
    assert err and isinstance(err[0], TransferError | OSError)
    parts = os.listdir(os.path.join(daemon["data"], "partial"))
    assert any(p.endswith(".state") for p in parts)  # checkpointed for a resume
    assert "still running after 1 s of draining" in daemon["log"].read_text()


def test_draining_refuses_new_transfers_with_a_typed_error(tmp_path):
    from dwcp._testbase.transfer import server_config
    from dwcp.transport.server import DataServer

    srv = DataServer(server_config(str(tmp_path / "d")))
    srv.start()
    try:
        assert srv.drain(0.1) == 0
        with pytest.raises(TransferError, match="shutting down.*code 14"):
            Sender(TransportConfig(), SecurityConfig(plaintext=True)).send(b"x" * 5000, *srv.address, "k")
    finally:
        srv.close()


def test_check_config_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nid = ""\n[transport]\nchunk_size_bytes = 5\nzz = 1\n')
    out = subprocess.run([sys.executable, "-m", "dwcp", "check-config", str(bad)], capture_output=True, text=True,
                         env=same_dwcp_env(), cwd=str(tmp_path))  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == f"dwcp check-config: 4 problem(s) in {bad}"
    assert sorted(x.split(": ", 1)[1].split(" ")[0] for x in lines[:-1]) == [
        "node.id",
        "security.ca_cert/cert/key:",
        "transport.chunk_size_bytes",
        "transport.zz:",
    ]
    good = tmp_path / "good.toml"
    good.write_text("[security]\nplaintext = true\n")
    out = subprocess.run([sys.executable, "-m", "dwcp", "check-config", str(good), "--json"], capture_output=True,
                         text=True, env=same_dwcp_env(), cwd=str(tmp_path))  # fmt: skip
    assert out.returncode == 0 and json.loads(out.stdout)["transport"]["max_streams"] == 16


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_log_lines_in_the_configured_format_and_journald_priorities(tmp_path, fmt):
    """[logging] format: every line parses as `fmt`, one per message; with its stderr the journal
    (JOURNAL_STREAM) each line carries its syslog priority and no timestamp; a reload says what changed."""
    data_dir = tmp_path / "d"
    cfg = tmp_path / "rx.toml"
    cfg.write_text(_toml(str(data_dir), extra=f'[logging]\nformat = "{fmt}"\n'))
    log = tmp_path / "rx.log"
    with open(log, "wb") as f:
        st = os.fstat(f.fileno())
        env = same_dwcp_env({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        proc = subprocess.Popen([sys.executable, "-m", "dwcp", "daemon", "--config", str(cfg)], stdout=f, stderr=f,
                                env=env, cwd=str(tmp_path))  # fmt: skip
    try:
        sock = str(data_dir / "control.sock")
        deadline = time.monotonic() + 20
        while True:
            try:
                request(sock, {"op": "status"}, timeout_s=2)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.05)
        cfg.write_text(
            _toml(str(data_dir), extra=f'[logging]\nformat = "{fmt}"\n[transport]\nchunk_size_bytes = "8M"\n')
        )
        assert request(sock, {"op": "reload"}, timeout_s=10)["applied"] == [
            "transport.chunk_size_bytes: 4194304 -> 8388608"
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [ln for ln in log.read_text().splitlines() if ln]
    assert lines and all(ln[:3] in ("<6>", "<4>", "<3>", "<7>", "<2>") for ln in lines), lines[:3]
    for ln in lines:
        body = ln[3:]
        if fmt == "json":
            doc = json.loads(body)
            assert set(doc) >= {"level", "logger", "msg"} and "ts" not in doc
        else:
            assert body.startswith("level=") and " logger=" in body and " msg=" in body, body
    assert any("reload: transport.chunk_size_bytes: 4194304 -> 8388608" in ln for ln in lines), lines
