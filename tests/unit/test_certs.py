"""Cluster CA and node certificates, TLS configuration and contexts (no sockets)."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dwcp.cli import certs_cmd
from dwcp.errors import ConfigError, RemoteProtocolError
from dwcp.security import certs as certs_mod
from dwcp.security.certs import check_key_permissions, init_ca, issue_node
from dwcp.security.tls import TLSConfig, client_context, peer_identity, server_context


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def load_cert(path) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- the CA -----------------------------------------------------------------------------------------


def test_ca_fields_and_modes(tmp_path):
    ca = init_ca(tmp_path / "ca", cluster_name="prod", days=30)
    assert (ca.ca_key, ca.ca_cert) == (str(tmp_path / "ca" / "ca.key"), str(tmp_path / "ca" / "ca.crt"))
    assert mode(tmp_path / "ca") == 0o700
    assert mode(ca.ca_key) == 0o600
    assert mode(ca.ca_cert) == 0o644
    assert read(ca.ca_key).startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    key = serialization.load_pem_private_key(read(ca.ca_key), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"

    cert = load_cert(ca.ca_cert)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "prod cluster CA"
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= life <= dt.timedelta(days=30, minutes=10)


def test_keys_are_never_created_readable(tmp_path, monkeypatch):
    """The key file is born 0600 (os.open's mode), even under umask 0; no chmod afterwards."""
    created = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        if flags & os.O_CREAT:
            created.append((os.fspath(path), mode, bool(flags & os.O_EXCL)))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(certs_mod.os, "open", spy)
    old = os.umask(0)
    try:
        ca = init_ca(tmp_path / "ca")
        node = issue_node(tmp_path / "ca", "n1", out_dir=tmp_path / "n1")
    finally:
        os.umask(old)
    keys = [(m, excl) for p, m, excl in created if p.endswith(".key.tmp")]
    assert keys == [(0o600, True), (0o600, True)]
    assert mode(ca.ca_key) == mode(node.key) == 0o600
    assert mode(tmp_path / "ca") == mode(tmp_path / "n1") == 0o700
    assert sorted(os.listdir(tmp_path / "ca")) == ["ca.crt", "ca.key"]  # no .tmp left behind


def test_ca_refuses_to_overwrite(tmp_path):
    ca = init_ca(tmp_path / "ca")
    before = read(ca.ca_key), read(ca.ca_cert)
    with pytest.raises(ConfigError, match=r"ca\.key already exists \(use --force"):
        init_ca(tmp_path / "ca")
    assert (read(ca.ca_key), read(ca.ca_cert)) == before
    init_ca(tmp_path / "ca", force=True)
    assert read(ca.ca_key) != before[0] and read(ca.ca_cert) != before[1]
    assert mode(ca.ca_key) == 0o600


def test_ca_refusal_writes_nothing(tmp_path):
    (tmp_path / "ca").mkdir(mode=0o700)
    (tmp_path / "ca" / "ca.crt").write_bytes(b"someone else's")
    with pytest.raises(ConfigError, match=r"ca\.crt already exists"):
        init_ca(tmp_path / "ca")
    assert os.listdir(tmp_path / "ca") == ["ca.crt"]


@pytest.mark.parametrize("kwargs", [{"days": 0}, {"days": -1}, {"days": True}, {"cluster_name": ""},
                                    {"cluster_name": "x" * 54}])  # fmt: skip
def test_ca_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        init_ca(tmp_path / "ca", **kwargs)
    assert not (tmp_path / "ca").exists()


# -- node certificates ------------------------------------------------------------------------------


def test_node_fields(tmp_path):
    ca = init_ca(tmp_path / "ca", cluster_name="prod")
    n = issue_node(tmp_path / "ca", "node-1", hosts=("10.0.0.5", "N1.example", "::1"))
    assert (n.key, n.cert, n.ca_cert) == (
        str(tmp_path / "ca" / "node-1.key"),
        str(tmp_path / "ca" / "node-1.crt"),
        ca.ca_cert,
    )
    assert mode(n.key) == 0o600 and mode(n.cert) == 0o644
    key = serialization.load_pem_private_key(read(n.key), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"

    cert, cacert = load_cert(n.cert), load_cert(ca.ca_cert)
    cert.verify_directly_issued_by(cacert)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1"
    assert cert.issuer == cacert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["n1.example"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = cacert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=825) <= life <= dt.timedelta(days=825, minutes=10)


def test_node_defaults_out_dir_and_single_host(tmp_path):
    init_ca(tmp_path / "ca")
    n = issue_node(tmp_path / "ca", "a", out_dir=tmp_path / "nodes" / "a")
    assert os.path.dirname(n.key) == str(tmp_path / "nodes" / "a") and mode(tmp_path / "nodes" / "a") == 0o700
    assert n.ca_cert == str(tmp_path / "ca" / "ca.crt")
    san = load_cert(n.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    # A lone string is one host, not a sequence of one-letter hosts.
    b = issue_node(tmp_path / "ca", "b", hosts="b.example")
    san = load_cert(b.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["b.example"]


def test_node_never_outlives_its_ca(tmp_path):
    ca = init_ca(tmp_path / "ca", days=10)
    n = issue_node(tmp_path / "ca", "a", days=825)
    assert load_cert(n.cert).not_valid_after_utc == load_cert(ca.ca_cert).not_valid_after_utc


def test_node_refuses_to_overwrite(tmp_path):
    init_ca(tmp_path / "ca")
    n = issue_node(tmp_path / "ca", "a")
    before = read(n.key)
    with pytest.raises(ConfigError, match=r"a\.key already exists"):
        issue_node(tmp_path / "ca", "a")
    assert read(n.key) == before
    issue_node(tmp_path / "ca", "a", force=True)
    assert read(n.key) != before and mode(n.key) == 0o600


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 65, "../evil", ".", "..", "a b", "nœud", "a\n", None, 7])
def test_invalid_node_ids(tmp_path, bad):
    init_ca(tmp_path / "ca")
    with pytest.raises(ConfigError, match="node id"):
        issue_node(tmp_path / "ca", bad)
    assert sorted(os.listdir(tmp_path / "ca")) == ["ca.crt", "ca.key"]


def test_valid_node_ids(tmp_path):
    init_ca(tmp_path / "ca")
    for good in ("x" * 64, "Node_1.dc-2", "-", "..."):
        issue_node(tmp_path / "ca", good)


@pytest.mark.parametrize(
    "hosts", [("bad host",), ("",), ("a..b",), ("-a.example",), ("x" * 64 + ".example",)]
)
def test_invalid_hosts(tmp_path, hosts):
    init_ca(tmp_path / "ca")
    with pytest.raises(ConfigError, match="host"):
        issue_node(tmp_path / "ca", "a", hosts=hosts)


def test_issue_needs_a_sound_ca(tmp_path):
    with pytest.raises(ConfigError, match="dwcp certs init"):
        issue_node(tmp_path / "nowhere", "a")
    ca = init_ca(tmp_path / "ca")
    os.chmod(ca.ca_key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        issue_node(tmp_path / "ca", "a")
    os.chmod(ca.ca_key, 0o600)
    other = init_ca(tmp_path / "other")
    os.replace(other.ca_cert, ca.ca_cert)
    with pytest.raises(ConfigError, match="does not belong"):
        issue_node(tmp_path / "ca", "a")
    with open(ca.ca_cert, "wb") as f:
        f.write(b"not a certificate")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        issue_node(tmp_path / "ca", "a")
    with pytest.raises(ConfigError, match="days"):
        issue_node(tmp_path / "other", "a", days=0)


def _as(monkeypatch, uid: int, gids=()):
    """Judge keys as if this process ran as ``uid`` in groups ``gids``."""
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    monkeypatch.setattr(os, "getegid", lambda: gids[0] if gids else 60000)
    monkeypatch.setattr(os, "getgroups", lambda: list(gids))


def test_check_key_permissions(tmp_path, monkeypatch):
    p = tmp_path / "k.key"
    p.write_bytes(b"k")
    st = os.stat(p)
    _as(monkeypatch, st.st_uid, [st.st_gid])
    for m in (0o600, 0o400):
        os.chmod(p, m)
        check_key_permissions(p)
    for m in (0o604, 0o620, 0o602, 0o644, 0o660, 0o650):
        os.chmod(p, m)
        with pytest.raises(ConfigError, match=f"mode {m:03o}.*chmod 600"):
            check_key_permissions(p)
    with pytest.raises(ConfigError, match="does not exist"):
        check_key_permissions(tmp_path / "missing.key")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the key to root and another user")
def test_a_service_user_reads_its_own_key_or_roots_with_its_group(tmp_path, monkeypatch):
    """The layouts `dwcp certs issue --owner` writes: 0600 owned by the service user, or 0640 owned by
    root with the service's group; a root-owned 0600 key is unreadable to the service, and says how."""
    p = tmp_path / "k.key"
    p.write_bytes(b"k")
    svc, grp_ = 4321, 4322
    _as(monkeypatch, svc, [grp_])
    os.chown(p, svc, grp_)
    os.chmod(p, 0o600)
    check_key_permissions(p)
    os.chown(p, 0, grp_)
    os.chmod(p, 0o640)
    check_key_permissions(p)
    os.chmod(p, 0o440)
    check_key_permissions(p)
    os.chown(p, 0, 0)  # root's group, which the service is not in
    os.chmod(p, 0o640)
    with pytest.raises(ConfigError, match="mode 640.*chown root:<the service's group>"):
        check_key_permissions(p)
    os.chmod(p, 0o600)
    with pytest.raises(ConfigError, match=r"is root's \(mode 600\): this process runs as 4321 and cannot read it; "
                                          r"chown 4321 .*--owner 4321"):  # fmt: skip
        check_key_permissions(p)
    os.chown(p, 4323, grp_)  # another user's, group-readable: no
    os.chmod(p, 0o640)
    with pytest.raises(ConfigError, match="mode 640"):
        check_key_permissions(p)


# -- TLS configuration and contexts -----------------------------------------------------------------


@pytest.fixture
def node(tmp_path):
    init_ca(tmp_path / "ca")
    return issue_node(tmp_path / "ca", "a")


def test_tls_config_validation(tmp_path, node):
    cfg = TLSConfig(node.ca_cert, node.cert, node.key)
    assert cfg.verify_hostname is False
    with pytest.raises(AttributeError):
        cfg.cert = "x"  # type: ignore[misc]
    from pathlib import Path

    assert TLSConfig(Path(node.ca_cert), Path(node.cert), Path(node.key)).cert == node.cert  # type: ignore[arg-type]
    missing = str(tmp_path / "missing.pem")
    for i, field in enumerate(("ca_cert", "cert", "key")):
        args = [node.ca_cert, node.cert, node.key]
        args[i] = missing
        with pytest.raises(ConfigError, match=rf"security\.{field}: {missing} is not a file"):
            TLSConfig(*args)
    with pytest.raises(ConfigError, match="security.cert: .* is not a file"):
        TLSConfig(node.ca_cert, str(tmp_path), node.key)  # a directory
    with pytest.raises(ConfigError, match="expected a file path"):
        TLSConfig(node.ca_cert, "", node.key)
    os.chmod(node.key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        TLSConfig(node.ca_cert, node.cert, node.key)


def test_contexts(node):
    cfg = TLSConfig(node.ca_cert, node.cert, node.key)
    s = server_context(cfg)
    assert s.minimum_version == ssl.TLSVersion.TLSv1_3
    assert s.verify_mode == ssl.CERT_REQUIRED
    assert s.options & ssl.OP_NO_COMPRESSION and s.options & ssl.OP_NO_TICKET and s.num_tickets == 0
    c = client_context(cfg)
    assert c.minimum_version == ssl.TLSVersion.TLSv1_3
    assert c.verify_mode == ssl.CERT_REQUIRED and c.check_hostname is False
    assert client_context(cfg, server_hostname_check=True).check_hostname is True
    strict = TLSConfig(node.ca_cert, node.cert, node.key, verify_hostname=True)
    assert client_context(strict).check_hostname is True
    assert client_context(strict, server_hostname_check=False).check_hostname is False


def test_contexts_report_unloadable_files(tmp_path, node):
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cluster CA"):
        server_context(TLSConfig(str(junk), node.cert, node.key))
    with pytest.raises(ConfigError, match="TLS identity"):
        client_context(TLSConfig(node.ca_cert, str(junk), node.key))
    other = issue_node(os.path.dirname(node.ca_cert), "b")
    with pytest.raises(ConfigError, match="TLS identity"):  # a key that is not the certificate's
        server_context(TLSConfig(node.ca_cert, node.cert, other.key))


def _memory_handshake(cctx: ssl.SSLContext, sctx: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A TLS handshake between two SSLObjects over memory BIOs: no sockets, no threads."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_side=False)
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    done = set()
    for _ in range(8):
        for side in (client, server):
            if side not in done:
                try:
                    side.do_handshake()
                    done.add(side)
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            return client, server
    raise AssertionError("the handshake did not finish")


def test_peer_identity_over_memory_bios(tmp_path):
    init_ca(tmp_path / "ca")
    a, b = issue_node(tmp_path / "ca", "node-a"), issue_node(tmp_path / "ca", "node-b")
    client, server = _memory_handshake(
        client_context(TLSConfig(a.ca_cert, a.cert, a.key)),
        server_context(TLSConfig(b.ca_cert, b.cert, b.key)),
    )
    assert client.version() == server.version() == "TLSv1.3"
    assert peer_identity(client) == "node-b"
    assert peer_identity(server) == "node-a"


class _FakePeer:
    def __init__(self, cert):
        self.cert = cert

    def getpeercert(self):
        return self.cert


@pytest.mark.parametrize(
    ("cert", "match"),
    [
        (None, "no certificate"),
        ({}, "no certificate"),
        ({"subject": ((("organizationName", "x"),),)}, "0 common names"),
        ({"subject": ((("commonName", "a"),), (("commonName", "b"),))}, "2 common names"),
        ({"subject": ((("commonName", "../etc"),),)}, "invalid node id"),
    ],
)
def test_peer_identity_refusals(cert, match):
    with pytest.raises(RemoteProtocolError, match=match) as exc:
        peer_identity(_FakePeer(cert))
    assert exc.value.code == 0
    assert peer_identity(_FakePeer({"subject": ((("commonName", "n-1"),),)})) == "n-1"


# -- the CLI module ---------------------------------------------------------------------------------


def _cli(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    certs_cmd.add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def test_cli(tmp_path, capsys):
    ca = str(tmp_path / "ca")
    assert certs_cmd.run(_cli("certs", "init", "--dir", ca, "--cluster", "prod")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"wrote {ca}/ca.key (CA key)", f"wrote {ca}/ca.crt (CA certificate)"]
    args = _cli("certs", "issue", "--dir", ca, "--node", "n1", "--host", "10.0.0.1", "--host", "n1.lan",
                "--out", str(tmp_path / "n1"), "--days", "5", "--json")  # fmt: skip
    assert certs_cmd.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "command": "issue",
        "node": "n1",
        "hosts": ["10.0.0.1", "n1.lan"],
        "key": str(tmp_path / "n1" / "n1.key"),
        "cert": str(tmp_path / "n1" / "n1.crt"),
        "ca_cert": f"{ca}/ca.crt",
    }
    with pytest.raises(ConfigError, match="already exists"):
        certs_cmd.run(_cli("certs", "init", "--dir", ca))
    with pytest.raises(ConfigError, match="init.*issue"):
        certs_cmd.run(_cli("certs"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to the service user")
def test_issue_for_a_service_user_writes_what_it_can_read(tmp_path):
    from dwcp.security.certs import parse_owner

    init_ca(tmp_path / "ca")
    uid, gid = parse_owner("nobody")
    node = issue_node(tmp_path / "ca", "n1", out_dir=tmp_path / "node", owner=(uid, gid))
    key, crt, ca = (os.stat(p) for p in (node.key, node.cert, node.ca_cert))
    assert (key.st_uid, key.st_gid, key.st_mode & 0o777) == (uid, gid, 0o600)
    assert (crt.st_mode & 0o777, ca.st_mode & 0o777) == (0o644, 0o644) and node.ca_cert == str(
        tmp_path / "node/ca.crt"
    )
    d = os.stat(tmp_path / "node")
    assert (d.st_uid, d.st_gid, d.st_mode & 0o777) == (uid, gid, 0o750)
    assert open(node.ca_cert, "rb").read() == open(tmp_path / "ca/ca.crt", "rb").read()
    # root with the service's group: 0640; a second node into the same directory rewrites ca.crt only
    node2 = issue_node(tmp_path / "ca", "n2", out_dir=tmp_path / "node", owner=parse_owner("root:nogroup"))
    k2 = os.stat(node2.key)
    assert (k2.st_uid, k2.st_gid, k2.st_mode & 0o777) == (0, gid, 0o640)
    with pytest.raises(ConfigError, match="the CA directory .* holds ca.key"):
        issue_node(tmp_path / "ca", "n3", owner=(uid, gid))
    with pytest.raises(ConfigError, match="no user 'no-such-user-x'"):
        parse_owner("no-such-user-x")
    with pytest.raises(ConfigError, match="no group 'no-such-group-x'"):
        parse_owner("nobody:no-such-group-x")
