"""`dwcp certs`: a cluster CA and node certificates (ECDSA P-256, X.509).

Theory of operation
-------------------
A cluster has one CA (``ca.key`` + ``ca.crt``, made by :func:`init_ca`).
Every node gets a key and a certificate signed by that CA
(:func:`issue_node`); its node id is the certificate's CN.  The data port
accepts exactly the peers whose certificate chains to the cluster CA
(``dwcp.security.tls``), so issuing a certificate *is* admitting a node.

Rules
-----
1. A private key is never readable by anyone but its owner, not even for an
   instant: it is written to a temporary file created by ``os.open`` with
   mode 0600 (``O_EXCL | O_NOFOLLOW``, so a planted file or symlink is not
   reused), then renamed into place (``dwcp.durable.write_atomic``).
   Directories we create are 0700.
2. Nothing is overwritten without ``force``; every target is checked before
   any file is written, so a refusal leaves the directory as it was.
3. Keys are loaded only if their mode passes :func:`check_key_permissions`.
4. A node certificate never outlives its CA (its ``notAfter`` is clamped).
5. Bad input is the operator's fault: it raises ``ConfigError`` naming the
   file or value, never a ``cryptography`` exception.
"""

from __future__ import annotations

import datetime as dt
import grp
import ipaddress
import os
import pwd
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dwcp.durable import fsync_dir, write_atomic
from dwcp.errors import ConfigError

__all__ = [
    "CAPaths",
    "NodePaths",
    "init_ca",
    "issue_node",
    "check_key_permissions",
    "parse_owner",
    "valid_node_id",
    "bft_signing_key",
    "bft_verify_key",
]

# A node id is a CN, a file name (<node_id>.key) and a log/metric label: keep
# it to characters that are safe in all three.  "." and ".." are excluded
# separately because they are path components.
NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A DNS name in a SAN: labels of letters, digits, '-' (and '_', seen in the wild), optionally a
# leading "*." wildcard.
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")
# The CA's CN is "<cluster> cluster CA" and a CN is at most 64 characters.
_CLUSTER_NAME_MAX = 64 - len(" cluster CA")
# Backdate notBefore a little so that peers with slightly slow clocks accept
# a certificate issued a moment ago.
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CAPaths:
    ca_key: str
    ca_cert: str


@dataclass(frozen=True)
class NodePaths:
    key: str
    cert: str
    ca_cert: str


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_key_permissions(path: str | os.PathLike[str]) -> None:
    """Raise ConfigError unless the private key at ``path`` is private to this process's user.

    Accepted: mode 0600 (or 0400) owned by the user this process runs as (or any owner when it runs
    as root); mode 0640 (or 0440) owned by root with a group this process is in -- the layout of
    ``dwcp certs issue --owner root:GROUP``.  Anything else is refused with the commands that fix it:
    a group-writable key can be swapped, an other-readable one read by anyone.  The mode of the file
    a symlink points to is what is checked.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ConfigError(f"private key {p} does not exist") from None
    mode, me = st.st_mode & 0o777, os.geteuid()
    owner, group, user = _user(st.st_uid), _group(st.st_gid), _user(me)
    if not mode & 0o077:
        if st.st_uid == me or me == 0:
            return
        raise ConfigError(f"private key {p} is {owner}'s (mode {mode:03o}): this process runs as {user} and cannot "
                          f"read it; chown {user} {p} (or: chown root:{user} {p} && chmod 640 {p}; "
                          f"`dwcp certs issue --owner {user}` writes it so)")  # fmt: skip
    groups = {os.getegid(), *os.getgroups()}
    if not mode & 0o037 and st.st_uid == 0 and (st.st_gid in groups or me == 0):
        return  # 0640/0440 root:<our group>
    raise ConfigError(f"private key {p} is accessible by group/other (mode {mode:03o}, {owner}:{group}); "
                      f"chmod 600 it and chown {user} {p}, or chown root:<the service's group> {p} && chmod 640 {p}")  # fmt: skip


def valid_node_id(node_id: object) -> TypeGuard[str]:
    """Whether ``node_id`` is a valid node id (and so a safe CN, file name and label)."""
    return (
        isinstance(node_id, str) and NODE_ID_RE.fullmatch(node_id) is not None and node_id not in (".", "..")
    )


def _check_node_id(node_id: object) -> str:
    if not valid_node_id(node_id):
        raise ConfigError(f"node id {node_id!r}: 1-64 characters of letters, digits, '.', '_' or '-'")
    return node_id


def _check_days(days: object) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"days: {days!r} is not a whole number of days >= 1")
    return days


def _general_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str):  # ("a") is a str, not a 1-tuple: accept it rather than split it into letters
        hosts = (hosts,)
    names: list[x509.GeneralName] = []
    for h in hosts:
        if not isinstance(h, str) or not h:
            raise ConfigError(f"host {h!r}: expected a DNS name or an IP address")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
            continue
        except ValueError:
            pass
        if len(h) > 253 or not _DNS_NAME.fullmatch(h):
            raise ConfigError(f"host {h!r}: not an IP address nor a valid DNS name")
        names.append(x509.DNSName(h.lower()))
    return names


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _refuse_existing(paths: Iterable[str], force: bool) -> None:
    if force:
        return
    for p in paths:
        if os.path.lexists(p):
            raise ConfigError(f"{p} already exists (use --force to replace it)")


def _make_dir(d: str) -> None:
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {d}: {exc.strerror}") from None
    if not os.path.isdir(d):
        raise ConfigError(f"{d} is not a directory")


def _write_all(files: list[tuple[str, bytes, int]], force: bool) -> None:
    _refuse_existing([p for p, _, _ in files], force)
    try:
        for path, data, mode in files:
            write_atomic(path, data, mode=mode, sync_dir=False)
        for d in {os.path.dirname(p) for p, _, _ in files}:
            fsync_dir(d)
    except OSError as exc:
        raise ConfigError(f"cannot write {exc.filename or files[0][0]}: {exc.strerror}") from None


def init_ca(
    directory: str | os.PathLike[str], *, cluster_name: str = "dwcp", days: int = 3650, force: bool = False
) -> CAPaths:
    """Create the cluster CA in ``directory``: ``ca.key`` (0600) and self-signed ``ca.crt``.

    Replacing a CA (``force``) orphans every node certificate it issued.
    """
    if not isinstance(cluster_name, str) or not 1 <= len(cluster_name) <= _CLUSTER_NAME_MAX:
        raise ConfigError(f"cluster name {cluster_name!r}: 1-{_CLUSTER_NAME_MAX} characters")
    _check_days(days)
    d = os.fspath(directory)
    paths = CAPaths(os.path.join(d, "ca.key"), os.path.join(d, "ca.crt"))
    _refuse_existing([paths.ca_key, paths.ca_cert], force)
    _make_dir(d)

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        # path_length=0: the CA signs node certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_all([(paths.ca_key, _key_pem(key), 0o600), (paths.ca_cert, pem, 0o644)], force)
    return paths


def _load_ca(d: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
    for p in (key_path, cert_path):
        if not os.path.isfile(p):
            raise ConfigError(f"no cluster CA in {d} ({p} missing); run `dwcp certs init` first")
    check_key_permissions(key_path)
    try:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except ValueError as exc:
        raise ConfigError(f"{cert_path}: not a PEM certificate ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an ECDSA key made by `dwcp certs init`")
    if cert.public_key() != key.public_key():
        raise ConfigError(f"{cert_path} does not belong to {key_path}")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise ConfigError(f"{cert_path} is not a CA certificate")
    return key, cert


def issue_node(
    directory: str | os.PathLike[str],
    node_id: str,
    *,
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    days: int = 825,
    force: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    owner: tuple[int, int] | None = None,
) -> NodePaths:
    """Issue ``<node_id>.key`` (0600) and ``<node_id>.crt`` signed by the CA in ``directory``.

    The files go to ``out_dir`` (created 0700 if missing) or ``directory``.
    ``hosts`` become the subjectAltName: IP addresses as such, the rest as
    DNS names.  They matter only to peers that turn hostname checks on.

    ``owner`` (uid, gid): the service that will read them (``--owner USER[:GROUP]``).  The key is
    then ``USER:GROUP`` 0600, or ``root:GROUP`` 0640 when USER is root (both pass
    ``check_key_permissions`` for a process of that user or group); the certificate and a copy of
    ``ca.crt`` (the CA directory keeps ``ca.key`` and stays the CA's) are 0644; ``out_dir`` (which
    must not be the CA directory) is ``USER:GROUP`` 0750.
    """
    _check_node_id(node_id)
    _check_days(days)
    sans = _general_names(hosts)
    d = os.fspath(directory)
    out = os.fspath(out_dir) if out_dir is not None else d
    if owner is not None and os.path.realpath(out) == os.path.realpath(d):
        raise ConfigError(f"--owner: the CA directory {d} holds ca.key, which no service may read; issue into "
                          "--out DIR (e.g. /etc/dwcp/node)")  # fmt: skip
    paths = NodePaths(os.path.join(out, f"{node_id}.key"), os.path.join(out, f"{node_id}.crt"),
                      os.path.join(out if owner is not None else d, "ca.crt"))  # fmt: skip
    ca_key, ca_cert = _load_ca(d)
    _refuse_existing([paths.key, paths.cert], force)
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise ConfigError(
            f"the cluster CA {paths.ca_cert} has expired ({ca_cert.not_valid_after_utc:%Y-%m-%d})"
        )
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    _make_dir(out)

    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        # Every node is both a server (receiving) and a client (sending).
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if owner is None:
        _write_all([(paths.key, _key_pem(key), 0o600), (paths.cert, pem, 0o644)], force)
        return paths
    uid, gid = owner
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write_all([(paths.key, _key_pem(key), 0o640 if uid == 0 else 0o600), (paths.cert, pem, 0o644)], force)
    _write_all([(paths.ca_cert, ca_pem, 0o644)], True)  # the CA's own certificate: the same bytes again
    try:
        for f in (paths.key, paths.cert, paths.ca_cert, out):
            os.chown(f, uid, gid)
        os.chmod(out, 0o750)
    except OSError as exc:
        raise ConfigError(f"--owner: cannot chown {exc.filename} to {_user(uid)}:{_group(gid)}: {exc.strerror} "
                          "(run as root)") from None  # fmt: skip
    return paths


def parse_owner(text: str) -> tuple[int, int]:
    """``USER[:GROUP]`` (names or numbers) -> (uid, gid); GROUP defaults to USER's primary group."""
    user, _, group = text.partition(":")
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--owner {text}: no user {user!r} (create the service user first: "
                          "scripts/install-systemd.sh, or useradd --system dwcp)") from None  # fmt: skip
    if not group:
        return pw.pw_uid, pw.pw_gid
    try:
        gr = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
    except KeyError:
        raise ConfigError(f"--owner {text}: no group {group!r}") from None
    return pw.pw_uid, gr.gr_gid


def bft_signing_key(path: str, *, create: bool = True):
    """This node's Ed25519 key for signing consensus messages in BFT mode, and its public key in hex.

    Made (mode 0600, raw 32 bytes) when missing and ``create``; an existing
    key must be private to its owner (``check_key_permissions``) and exactly
    32 bytes.  Peers list the public key as ``bft_key`` in [[cluster.peers]].
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if not os.path.exists(path):
        if not create:
            raise ConfigError(
                f"BFT signing key {path} does not exist (`dwcp certs bft-key --key-file {path}`)"
            )
        _make_dir(os.path.dirname(path) or ".")
        key = Ed25519PrivateKey.generate()
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        _write_all([(path, key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()), 0o600)], False)
    check_key_permissions(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(33)
    except OSError as exc:
        raise ConfigError(
            f"BFT signing key {path}: {exc.strerror} (a file of 32 raw bytes is expected)"
        ) from None
    if len(raw) != 32:
        raise ConfigError(f"BFT signing key {path}: expected 32 raw bytes (Ed25519), found {len(raw)}")
    key = Ed25519PrivateKey.from_private_bytes(raw)
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def bft_verify_key(hex_key: str):
    """An Ed25519 public key from its 64 hex digits (a peer's ``bft_key``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))
    except ValueError:
        raise ConfigError(f"bft_key {hex_key!r}: not an Ed25519 public key (64 hex digits)") from None
