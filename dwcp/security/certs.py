"""`dwcp certs`: a cluster CA and node certificates (ECDSA P-256, X.509).

Private keys are created with mode 0600 from the first byte (os.open with
the mode, never chmod after the fact) in directories of mode 0700, and are
never overwritten without ``force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dwcp.errors import ConfigError

__all__ = ["CAPaths", "NodePaths", "init_ca", "issue_node", "check_key_permissions"]

_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class CAPaths:
    ca_key: str
    ca_cert: str


@dataclass(frozen=True)
class NodePaths:
    key: str
    cert: str
    ca_cert: str


def _write(path: str, data: bytes, mode: int, force: bool) -> None:
    if os.path.exists(path) and not force:
        raise ConfigError(f"{path} already exists (use --force to replace it)")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def check_key_permissions(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"private key {path} does not exist") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"private key {path} is readable by group/other (mode {st.st_mode & 0o777:o}); chmod 600 it")


def init_ca(directory, *, cluster_name: str = "dwcp", days: int = 3650, force: bool = False) -> CAPaths:
    d = os.fspath(directory)
    os.makedirs(d, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name)])  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    paths = CAPaths(os.path.join(d, "ca.key"), os.path.join(d, "ca.crt"))
    if not force:
        for p in (paths.ca_key, paths.ca_cert):
            if os.path.exists(p):
                raise ConfigError(f"{p} already exists (use --force to replace it)")
    _write(paths.ca_key, _key_pem(key), 0o600, force)
    _write(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return paths


def issue_node(directory, node_id: str, *, hosts=("127.0.0.1", "localhost"), days: int = 825,
               force: bool = False, out_dir=None) -> NodePaths:  # fmt: skip
    if not _NODE_ID.match(node_id or ""):
        raise ConfigError(f"node id {node_id!r}: 1-64 characters of letters, digits, '.', '_' or '-'")
    d = os.fspath(directory)
    out = os.fspath(out_dir) if out_dir is not None else d
    os.makedirs(out, mode=0o700, exist_ok=True)
    try:
        with open(os.path.join(d, "ca.key"), "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(d, "ca.crt"), "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
    except FileNotFoundError as exc:
        raise ConfigError(f"no cluster CA in {d} ({exc.filename} missing); run `dwcp certs init` first") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{d}/ca.key is not an ECDSA key made by `dwcp certs init`")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = NodePaths(os.path.join(out, f"{node_id}.key"), os.path.join(out, f"{node_id}.crt"),
                      os.path.join(d, "ca.crt"))  # fmt: skip
    if not force:
        for p in (paths.key, paths.cert):
            if os.path.exists(p):
                raise ConfigError(f"{p} already exists (use --force to replace it)")
    _write(paths.key, _key_pem(key), 0o600, force)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return paths
