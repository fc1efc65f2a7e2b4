"""The first install, as a user follows the README on a systemd host, down to the daemon running as an
unprivileged service user: dwcp installed into a fresh venv of the system's Python, the installed
layout from scripts/install-systemd.sh, keys issued with `dwcp certs issue --owner`, `dwcp
check-config` (the unit's ExecStartPre) and `dwcp daemon` run as that user (`setpriv`), and a
mutual-TLS send to it.  Slow (it builds and installs the package); needs root, `setpriv`, the
`nobody` user and a system Python with venv that user can run."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np
import pytest

from dwcp.config import SecurityConfig, TransportConfig
from dwcp.daemon.control import request
from dwcp.digest import object_digest
from dwcp.transport.sender import Sender

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSTEM_PYTHON = "/usr/bin/python3"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (to chown keys and run the daemon as another user)"
    if shutil.which("setpriv") is None:
        return "no setpriv (util-linux)"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "no `nobody` user"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON} for a venv the service user can run"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))]


def _as_nobody(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=120, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def installed():
    """A world-readable directory with a venv of the system Python and dwcp installed into it."""
    top = tempfile.mkdtemp(prefix="dwcp-install-", dir="/tmp")
    os.chmod(top, 0o755)
    try:
        venv = os.path.join(top, "venv")
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", venv], check=True, timeout=300)
        r = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", REPO], capture_output=True, text=True,
                           timeout=1200)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        yield top, os.path.join(venv, "bin", "dwcp")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _layout(top: str, dwcp: str, owner: str) -> dict:
    root = tempfile.mkdtemp(prefix="root-", dir=top)
    os.chmod(root, 0o755)
    r = subprocess.run([os.path.join(REPO, "scripts", "install-systemd.sh"), "--root", root, "--dwcp", dwcp],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    unit = open(os.path.join(root, "etc/systemd/system/dwcpd.service")).read()
    assert f"ExecStart={dwcp} daemon --config /etc/dwcp/dwcp.toml" in unit and "User=dwcp" in unit
    docs = [
        d
        for line in unit.splitlines()
        if line.startswith("Documentation=")
        for d in line.split("=", 1)[1].split()
    ]
    assert docs and all(os.path.isfile(os.path.join(root, d.removeprefix("file:///"))) for d in docs), docs
    etc = os.path.join(root, "etc/dwcp")
    ca, node, tx = (os.path.join(etc, d) for d in ("ca", "node", "tx"))
    for argv in (["certs", "init", "--dir", ca], ["certs", "issue", "--dir", ca, "--node", "n1", "--out", node,
                 "--owner", owner], ["certs", "issue", "--dir", ca, "--node", "tx", "--out", tx]):  # fmt: skip
        r = subprocess.run([dwcp, *argv], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    nobody = pwd.getpwnam("nobody")
    os.chown(etc, 0, nobody.pw_gid)
    os.chmod(etc, 0o750)  # as install-systemd.sh leaves /etc/dwcp for the dwcp group
    data = os.path.join(root, "var/lib/dwcp")
    os.makedirs(data, mode=0o700)
    os.chown(data, nobody.pw_uid, nobody.pw_gid)  # systemd's StateDirectory= does this
    cfg = os.path.join(etc, "n1.toml")
    with open(cfg, "w") as f:
        f.write(f'[node]\nid = "n1"\n[listen]\nhost = "127.0.0.1"\ndata_port = 0\nmetrics_port = -1\n'
                f'[security]\nca_cert = "{node}/ca.crt"\ncert = "{node}/n1.crt"\nkey = "{node}/n1.key"\n'
                f'[storage]\ndata_dir = "{data}"\n')  # fmt: skip
    return {"root": root, "cfg": cfg, "node": node, "tx": tx, "ca": ca, "data": data}


@pytest.mark.parametrize("owner, mode", [("nobody", 0o600), ("root:nogroup", 0o640)])
def test_the_daemon_runs_as_the_service_user_from_the_installed_layout(installed, owner, mode):
    top, dwcp = installed
    lay = _layout(top, dwcp, owner)
    key = os.path.join(lay["node"], "n1.key")
    st = os.stat(key)
    assert st.st_mode & 0o777 == mode and oct(os.stat(lay["node"]).st_mode & 0o777) == "0o750"
    r = _as_nobody([dwcp, "check-config", lay["cfg"]])  # the unit's ExecStartPre, as the service user
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", dwcp, "daemon",
                             "--config", lay["cfg"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=top)  # fmt: skip
    try:
        sock = os.path.join(lay["data"], "control.sock")
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                st = request(sock, {"op": "status"}, timeout_s=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the daemon did not come up"
                time.sleep(0.1)
        assert pwd.getpwuid(os.stat(sock).st_uid).pw_name == "nobody"
        port = int(st["data_port"].rsplit(":", 1)[1])
        data = np.random.default_rng(3).integers(0, 256, 2 << 20, dtype=np.uint8)
        sec = SecurityConfig(
            ca_cert=f"{lay['ca']}/ca.crt", cert=f"{lay['tx']}/tx.crt", key=f"{lay['tx']}/tx.key"
        )
        r2 = Sender(TransportConfig(), sec, node_id="tx").send(data, "127.0.0.1", port, "vm/svc")
        assert r2.verified and r2.tls and r2.digest == object_digest(data).hex()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    # a key readable by others: check-config (as the service user) says what to run, and fails
    os.chmod(key, 0o644)
    r = _as_nobody([dwcp, "check-config", lay["cfg"]])
    assert r.returncode != 0 and f"private key {key} is accessible by group/other (mode 644" in r.stderr
    assert "chmod 600" in r.stderr


def test_a_root_only_key_is_refused_with_how_to_fix_it(installed):
    top, dwcp = installed
    lay = _layout(top, dwcp, "nobody")
    key = os.path.join(lay["node"], "n1.key")
    os.chown(key, 0, 0)  # what `dwcp certs issue` without --owner leaves, run as root
    r = _as_nobody([dwcp, "check-config", lay["cfg"]])
    assert r.returncode != 0, r.stdout
    assert (
        f"private key {key} is root's (mode 600): this process runs as nobody and cannot read it" in r.stderr
    )
    assert "--owner nobody" in r.stderr


def test_the_wheel_carries_no_generated_c_stripped_extensions_a_license_and_the_data_files(
    installed, tmp_path
):
    import zipfile

    top, dwcp = installed
    src = tmp_path / "src"  # the repository as a fresh clone has it: no build/, no in-place build products
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "htmlcov", "__pycache__",
                                                             "*.so", "*.c", ".pytest_cache"))  # fmt: skip
    r = subprocess.run([os.path.join(top, "venv", "bin", "pip"), "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                        str(src)], capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = tmp_path.glob("dwcp-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert not [n for n in names if n.endswith(".c")], "generated C in the wheel"
    assert any(n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in names), names
    for want in ("share/dwcp/dwcpd.service", "share/dwcp/dwcp.toml.example", "share/dwcp/monitoring/alerts.yml",
                 "share/doc/dwcp/CHANGELOG.md"):  # fmt: skip
        assert any(n.endswith(want) for n in names), want
    sos = [n for n in names if n.endswith(".so")]
    assert sos
    with zipfile.ZipFile(whl) as z:
        for n in sos:
            data = z.read(n)
            assert b".debug_info" not in data and b".symtab" not in data, f"{n} is not stripped"
    r = subprocess.run([dwcp, "paths"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "dwcpd.service" in r.stdout and "monitoring" in r.stdout, r.stderr
