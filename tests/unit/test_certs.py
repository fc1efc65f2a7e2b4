"""Cluster CA and node certificates."""

from __future__ import annotations

import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dwcp.errors import ConfigError
from dwcp.security.certs import check_key_permissions, init_ca, issue_node
from dwcp.security.tls import TLSConfig


def test_ca_and_node(tmp_path):
    ca = init_ca(tmp_path / "ca", cluster_name="prod")
    assert stat.S_IMODE(os.stat(tmp_path / "ca").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca.ca_key).st_mode) == 0o600
    n = issue_node(tmp_path / "ca", "node-1", hosts=("10.0.0.5", "n1.example"))
    assert stat.S_IMODE(os.stat(n.key).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(open(n.cert, "rb").read())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert san.get_values_for_type(x509.DNSName) == ["n1.example"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    cacert = x509.load_pem_x509_certificate(open(ca.ca_cert, "rb").read())
    cert.verify_directly_issued_by(cacert)


def test_refusals(tmp_path):
    init_ca(tmp_path / "ca")
    with pytest.raises(ConfigError, match="already exists"):
        init_ca(tmp_path / "ca")
    init_ca(tmp_path / "ca", force=True)
    issue_node(tmp_path / "ca", "a")
    with pytest.raises(ConfigError, match="already exists"):
        issue_node(tmp_path / "ca", "a")
    for bad in ("", "a/b", "x" * 65, "../evil"):
        with pytest.raises(ConfigError, match="node id"):
            issue_node(tmp_path / "ca", bad)
    with pytest.raises(ConfigError, match="dwcp certs init"):
        issue_node(tmp_path / "nowhere", "a")


def test_key_permissions_and_tls_config(tmp_path):
    init_ca(tmp_path / "ca")
    n = issue_node(tmp_path / "ca", "a")
    TLSConfig(n.ca_cert, n.cert, n.key)
    os.chmod(n.key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        check_key_permissions(n.key)
    with pytest.raises(ConfigError, match="chmod 600"):
        TLSConfig(n.ca_cert, n.cert, n.key)
    with pytest.raises(ConfigError, match="not a file"):
        TLSConfig(str(tmp_path / "missing.crt"), n.cert, n.key)
