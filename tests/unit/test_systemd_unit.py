"""systemd/dwcpd.service and scripts/install-systemd.sh: the promises the unit makes."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dwcp.config import StorageConfig, TransportConfig

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
UNIT = os.path.join(ROOT, "systemd", "dwcpd.service")
INSTALL = os.path.join(ROOT, "scripts", "install-systemd.sh")

if not os.path.exists(UNIT):
    pytest.skip("systemd/ is not beside the tests (installed package)", allow_module_level=True)


def _unit(path: str = UNIT) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def _seconds(v: str) -> float:
    return float(v.rstrip("s"))


def test_notify_type_watchdog_restart_and_reload():
    u = _unit()
    assert u["Type"] == ["notify"] and u["NotifyAccess"] == ["main"]
    assert u["Restart"] == ["on-failure"] and _seconds(u["WatchdogSec"][0]) >= 10
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert u["ExecStart"][0].endswith("dwcp daemon --config /etc/dwcp/dwcp.toml")
    assert u["ExecStartPre"][0].endswith("dwcp check-config /etc/dwcp/dwcp.toml")
    # SIGTERM drains for drain_timeout_s; systemd must not SIGKILL before that
    assert _seconds(u["TimeoutStopSec"][0]) > TransportConfig().drain_timeout_s + 5


def test_hardening():
    u = _unit()
    for k in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
              "ProtectKernelModules", "ProtectControlGroups", "RestrictSUIDSGID", "LockPersonality",
              "RestrictNamespaces", "RestrictRealtime"):  # fmt: skip
        assert u[k] == ["yes"], k
    assert u["ProtectSystem"] == ["strict"]
    assert u["ReadWritePaths"] == [StorageConfig().data_dir]  # the default data dir is the only writable path
    assert set(u["CapabilityBoundingSet"][0].split()) <= {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert not u.get("AmbientCapabilities"), "no capability is granted by default"
    assert u["UMask"] == ["0077"] and u["User"] == ["dwcp"]


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
def test_install_script_into_a_root_then_systemd_analyze_verify(tmp_path):
    fake = tmp_path / "bin" / "dwcp"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    root = tmp_path / "root"
    r = subprocess.run(
        ["sh", INSTALL, "--root", str(root), "--dwcp", str(fake)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    unit = root / "etc" / "systemd" / "system" / "dwcpd.service"
    assert _unit(str(unit))["ExecStart"] == [f"{fake} daemon --config /etc/dwcp/dwcp.toml"]
    conf = root / "etc" / "dwcp" / "dwcp.toml"
    assert conf.read_text() == open(os.path.join(ROOT, "systemd", "dwcp.toml.example")).read()
    conf.write_text("# mine\n")
    r = subprocess.run(
        ["sh", INSTALL, "--root", str(root), "--dwcp", str(fake)], capture_output=True, text=True
    )
    assert r.returncode == 0 and conf.read_text() == "# mine\n" and "kept the existing" in r.stdout
    r = subprocess.run(["sh", INSTALL, "--root", str(root), "--dwcp", str(tmp_path / "nope")], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 1 and "no dwcp executable" in r.stderr
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: unit syntax not verified")
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert r.returncode == 0 and not problems, problems
