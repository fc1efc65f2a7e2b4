"""What a person sees when something fails: one line naming the target and a hint, a distinct exit code
per kind of failure (`dwcp --help` lists them), a JSON object under --json, and quiet on a closed pipe."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from dwcp._testbase.transfer import server_config
from dwcp.cli.demo import same_dwcp_env
from dwcp.cli.main import (
    EXIT_AUTH,
    EXIT_CONFIG,
    EXIT_NETWORK,
    EXIT_STORAGE,
    EXIT_USAGE,
    main,
)
from dwcp.transport.server import DataServer


def _dwcp(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dwcp", *args], capture_output=True, text=True,
                          env=same_dwcp_env(), cwd=str(cwd), timeout=60)  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_peer_is_named_with_a_hint_and_exit_4(tmp_path):
    src = tmp_path / "obj"
    src.write_bytes(b"x" * 1000)
    port = _closed_port()
    r = _dwcp("send", str(src), "--to", f"127.0.0.1:{port}", "--key", "k", "--plaintext", cwd=tmp_path)
    assert r.returncode == EXIT_NETWORK
    assert r.stderr == (f"dwcp send: error: cannot connect to 127.0.0.1:{port}: connection refused -- is dwcpd "
                        "running there, on that port?\n")  # fmt: skip
    r = _dwcp(
        "send", str(src), "--to", f"127.0.0.1:{port}", "--key", "k", "--plaintext", "--json", cwd=tmp_path
    )
    err = json.loads(r.stdout)
    assert err["ok"] is False and err["kind"] == "network" and err["exit"] == EXIT_NETWORK == r.returncode
    assert f"cannot connect to 127.0.0.1:{port}" in err["error"]


def test_local_file_config_and_usage_errors_have_their_codes(tmp_path, capsys):
    assert (
        main(["send", str(tmp_path / "nope"), "--to", "127.0.0.1:1", "--key", "k", "--plaintext"])
        == EXIT_STORAGE
    )
    assert f"cannot open {tmp_path}/nope: no such file or directory" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\ndata_dir = 'rel'\n")
    assert main(["send", str(bad), "--to", "cluster", "--key", "k", "--config", str(bad)]) == EXIT_CONFIG
    with pytest.raises(SystemExit) as ei:
        main(["send", "--rate", "5 parsecs"])
    assert ei.value.code == EXIT_USAGE
    assert "exit codes:" in _dwcp("--help", cwd=tmp_path).stdout


def test_tls_failures_say_whose_certificate_or_which_side(tmp_path, pki):
    srv = DataServer(server_config(tmp_path / "rx", plaintext=False, certs=pki["rx"]))
    srv.start()
    try:
        host, port = srv.address
        src = tmp_path / "obj"
        src.write_bytes(b"x" * 1000)
        # a plaintext sender meets a mutual-TLS daemon
        r = _dwcp("send", str(src), "--to", f"{host}:{port}", "--key", "k", "--plaintext", cwd=tmp_path)
        assert r.returncode == EXIT_AUTH, r.stderr
        assert (
            f"{host}:{port} closed the connection instead of answering -- is it a mutual-TLS daemon?"
            in r.stderr
        )
        # a sender from another cluster's CA: the daemon's certificate does not verify against ours
        m = pki["mallory"]
        r = _dwcp("send", str(src), "--to", f"{host}:{port}", "--key", "k", "--ca", m.ca_cert, "--cert", m.cert,
                  "--key-file", m.key, cwd=tmp_path)  # fmt: skip
        assert r.returncode == EXIT_AUTH, r.stderr
        assert f"{host}:{port}: its certificate did not verify against our CA ({m.ca_cert})" in r.stderr
    finally:
        srv.close()


def test_a_closed_pipe_is_quiet(tmp_path):
    r = subprocess.run(f"{sys.executable} -m dwcp doctor --json | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}",
                       shell=True, executable="/bin/bash", capture_output=True, text=True, env=same_dwcp_env(),
                       cwd=str(tmp_path), timeout=120)  # fmt: skip
    assert r.stderr == "" and r.stdout.strip() in ("0", "141"), (r.stdout, r.stderr)


def test_rates_take_bits_and_bytes():
    from dwcp.cli.main import _rate

    assert _rate("500Mbit") == 62.5e6 and _rate("60MB") == 60e6 and _rate("60MiB") == 60 * 2**20
    assert _rate("1Gbit/s") == 125e6 and _rate("4M") == 4 * 2**20


def test_a_daemon_whose_port_is_taken_says_which_and_what_to_do(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        cfg = tmp_path / "rx.toml"
        cfg.write_text(f'[listen]\nhost = "127.0.0.1"\ndata_port = {port}\nmetrics_port = -1\n[security]\n'
                       f'plaintext = true\n[storage]\ndata_dir = "{tmp_path}/d"\n')  # fmt: skip
        r = _dwcp("daemon", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert (f"listen.data_port: cannot bind 127.0.0.1:{port}: in use by another process (ss -ltnp 'sport = :{port}'):"
            " another dwcpd?") in r.stderr  # fmt: skip


def test_a_connection_lost_mid_send_names_the_peer_and_the_way_on(tmp_path):
    """The receiver goes away mid-transfer: the error names it and says that sending again resumes."""
    from dwcp._testbase.fuzzer import FaultProxy

    srv = DataServer(server_config(tmp_path / "rx"))
    srv.start()
    proxy = FaultProxy(srv.address)
    try:
        proxy.cut_after(
            300, conn=1
        )  # the control stream: its HELLO (~200-250 bytes) passes, its DONE does not
        src = tmp_path / "obj"
        src.write_bytes(b"y" * (4 << 20))
        host, port = proxy.address
        r = _dwcp("send", str(src), "--to", f"{host}:{port}", "--key", "k", "--plaintext", "--streams", "1",
                  cwd=tmp_path)  # fmt: skip
        assert r.returncode == EXIT_NETWORK, r.stderr
        assert f"{host}:{port}: " in r.stderr and "sending again resumes" in r.stderr, r.stderr
    finally:
        proxy.close()
        srv.close()
