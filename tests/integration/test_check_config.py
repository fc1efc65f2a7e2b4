"""`dwcp check-config` checks what `nginx -t` and `sshd -t` check: every problem, one per line."""

from __future__ import annotations

import socket

import pytest

from dwcp.cli.main import main as cli
from dwcp.config import load_toml, parse_size


def _check(tmp_path, body: str, capsys) -> tuple[int, str]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(body)
    capsys.readouterr()
    rc = cli(["check-config", str(cfg)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _plain(tmp_path, extra: str = "") -> str:
    return f'[security]\nplaintext = true\n[storage]\ndata_dir = "{tmp_path}/d"\n[listen]\ndata_port = 0\n{extra}'


def test_a_good_config_passes(tmp_path, capsys):
    assert _check(tmp_path, _plain(tmp_path), capsys) == (0, f"{tmp_path}/c.toml: ok\n")


@pytest.mark.parametrize("extra, want", [
    ('[transport]\nchunk_size = 4194304\n', "transport.chunk_size: unknown setting (did you mean chunk_size_bytes?)"),
    ('[trasnport]\n', "trasnport: unknown section (did you mean transport?)"),
    ('[transport]\ncongestion = "cubicx"\n', "transport.congestion 'cubicx' is not available in this kernel"),
    ('[transport]\nchunk_size_bytes = "4Q"\n', "transport.chunk_size_bytes: unknown unit 'Q' in '4Q'"),
    ('[consensus]\nbft_key_file = "keys/bft.key"\n', "consensus.bft_key_file 'keys/bft.key' must be an absolute path"),
])  # fmt: skip
def test_each_problem_is_named(tmp_path, capsys, extra, want):
    rc, out = _check(tmp_path, _plain(tmp_path) + extra, capsys)
    assert rc != 0 and want in out, out


def test_relative_paths_missing_files_and_every_problem_at_once(tmp_path, capsys):
    body = ('[security]\nca_cert = "/nonexistent/ca.crt"\ncert = "n.crt"\nkey = "/nonexistent/n.key"\n'
            '[storage]\ndata_dir = "var/dwcp"\n')  # fmt: skip
    rc, out = _check(tmp_path, body, capsys)
    assert rc != 0
    assert "storage.data_dir 'var/dwcp' must be an absolute path" in out
    assert "security.cert 'n.crt' must be an absolute path" in out
    body = f'[security]\nca_cert = "{tmp_path}/ca.crt"\ncert = "{tmp_path}/n.crt"\nkey = "{tmp_path}/n.key"\n'
    rc, out = _check(tmp_path, body + f'[storage]\ndata_dir = "{tmp_path}/d"\n', capsys)
    assert rc != 0 and f"security.ca_cert: {tmp_path}/ca.crt is not a file" in out, out


def test_sizes_and_rates_take_units_in_files_as_on_the_command_line(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(_plain(tmp_path, '[transport]\nchunk_size_bytes = "8MiB"\nper_stream_window_bytes = "8M"\n'
                                    'rate_limit_bytes_per_s = "500Mbit"\nlink_bytes_per_s = "1.25GB/s"\n'))  # fmt: skip
    tp = load_toml(str(cfg)).transport
    assert (tp.chunk_size_bytes, tp.per_stream_window_bytes) == (8 << 20, 8 << 20)
    assert (tp.rate_limit_bytes_per_s, tp.link_bytes_per_s) == (62.5e6, 1.25e9)
    assert parse_size("60MB") == 60e6 and parse_size("60MiB") == 60 << 20 and parse_size("60M") == 60 << 20
    assert parse_size("500Mbit", rate=True) == 62.5e6 and parse_size("1Gbit/s", rate=True) == 125e6
    for bad in ("500Mbit", "x", "-1", "3 furlongs"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_the_data_port_must_be_bindable(tmp_path, capsys):
    with socket.socket() as s:  # somebody else holds it
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rc, out = _check(tmp_path, _plain(tmp_path).replace("data_port = 0", f"data_port = {port}"), capsys)
    assert rc != 0 and f"cannot bind 127.0.0.1:{port}: in use by another process" in out, out
    body = (
        _plain(tmp_path)
        .replace("[listen]\n", '[listen]\nhost = "192.0.2.77"\n')
        .replace("data_port = 0", "data_port = 7700")
    )
    rc, out = _check(tmp_path, body, capsys)
    assert rc != 0 and "192.0.2.77 is not an address of this host" in out, out


def test_the_other_files_a_config_names_are_checked(tmp_path, capsys):
    body = _plain(tmp_path, f'[consensus]\nbackend = "etcd"\nenabled = true\netcd_endpoints = ["https://127.0.0.1:1"]\n'
                            f'etcd_ca = "{tmp_path}/none.crt"\n')  # fmt: skip
    rc, out = _check(tmp_path, body, capsys)
    assert rc != 0 and f"consensus.etcd_ca: {tmp_path}/none.crt is missing or not readable" in out, out
