"""More dwcp.security.certs rules: refusals of unsound CAs, directories and files, and the BFT keys."""

from __future__ import annotations

import datetime as dt
import errno
import os
import stat

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from dwcp.errors import ConfigError
from dwcp.security import certs as certs_mod
from dwcp.security.certs import bft_signing_key, bft_verify_key, check_key_permissions, init_ca, issue_node


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def listing(d) -> list[str]:
    return sorted(os.listdir(d))


def write_ca(
    d, key, *, days: float = 30, ca: bool | None = True, ski: bool = True, encrypt: bytes | None = None
):
    """A hand-made CA in ``d`` (to reach what init_ca never makes: expired, no SKI, not a CA, RSA...)."""
    os.makedirs(d, exist_ok=True)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand CA")])
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400)).not_valid_after(now + dt.timedelta(days=days))
    )  # fmt: skip
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    cert = b.sign(key, hashes.SHA256())
    enc = serialization.BestAvailableEncryption(encrypt) if encrypt else serialization.NoEncryption()
    kp, cp = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
    with open(kp, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    os.chmod(kp, 0o600)
    with open(cp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert


# -- directories and writes -------------------------------------------------------------------------------


def test_ca_directory_blocked_by_a_file(tmp_path):
    """Rule 5: a CA directory that cannot be created is a ConfigError naming it, and nothing is written."""
    blocker = tmp_path / "f"
    blocker.write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"cannot create directory {blocker}"):
        init_ca(blocker)
    assert blocker.read_bytes() == b"x" and listing(tmp_path) == ["f"]


def test_node_out_dir_blocked_by_a_file(tmp_path):
    init_ca(tmp_path / "ca")
    blocker = tmp_path / "out"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot create directory .*out"):
        issue_node(tmp_path / "ca", "n1", out_dir=blocker / "sub")
    assert listing(tmp_path / "ca") == ["ca.crt", "ca.key"]


def test_created_dir_must_be_a_directory(tmp_path, monkeypatch):
    """If the path is still no directory after makedirs (e.g. a race), the write is refused."""
    target = tmp_path / "x"
    target.write_bytes(b"")
    monkeypatch.setattr(certs_mod.os, "makedirs", lambda *a, **k: None)
    with pytest.raises(ConfigError, match=f"{target} is not a directory"):
        init_ca(target)


def test_directories_made_are_private(tmp_path):
    """Rule 1: directories we create are 0700 (CA dir, node out_dir, BFT key dir)."""
    init_ca(tmp_path / "ca")
    issue_node(tmp_path / "ca", "n1", out_dir=tmp_path / "out")
    bft_signing_key(str(tmp_path / "bft" / "k.key"))
    for d in ("ca", "out", "bft"):
        assert mode(tmp_path / d) == 0o700, d


@pytest.mark.parametrize("filename", [True, False])
def test_write_failure_is_a_config_error_naming_the_file(tmp_path, monkeypatch, filename):
    def fail(path, data, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", *((path,) if filename else ()))

    monkeypatch.setattr(certs_mod, "write_atomic", fail)
    with pytest.raises(ConfigError, match=r"cannot write .*ca\.key: No space left on device"):
        init_ca(tmp_path / "ca")


# -- loading the CA ---------------------------------------------------------------------------------------


def test_issue_refuses_an_encrypted_or_garbage_ca_key(tmp_path):
    d = tmp_path / "ca"
    write_ca(d, ec.generate_private_key(ec.SECP256R1()), encrypt=b"pw")
    with pytest.raises(ConfigError, match=r"ca\.key: not an unencrypted PEM private key"):
        issue_node(d, "n1")
    (d / "ca.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        issue_node(d, "n1")
    assert listing(d) == ["ca.crt", "ca.key"]


def test_issue_refuses_a_non_ecdsa_ca(tmp_path):
    d = tmp_path / "ca"
    write_ca(d, rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(ConfigError, match=r"ca\.key is not an ECDSA key"):
        issue_node(d, "n1")


@pytest.mark.parametrize("ca", [False, None], ids=["ca-false", "no-basic-constraints"])
def test_issue_refuses_a_non_ca_certificate(tmp_path, ca):
    d = tmp_path / "ca"
    write_ca(d, ec.generate_private_key(ec.SECP256R1()), ca=ca)
    with pytest.raises(ConfigError, match=r"ca\.crt is not a CA certificate"):
        issue_node(d, "n1")
    assert listing(d) == ["ca.crt", "ca.key"]


def test_issue_refuses_an_expired_ca_and_writes_nothing(tmp_path):
    d = tmp_path / "ca"
    cert = write_ca(d, ec.generate_private_key(ec.SECP256R1()), days=-1)
    with pytest.raises(ConfigError, match=f"has expired \\({cert.not_valid_after_utc:%Y-%m-%d}\\)"):
        issue_node(d, "n1", out_dir=tmp_path / "out")
    assert listing(d) == ["ca.crt", "ca.key"] and not (tmp_path / "out").exists()


def test_ca_without_ski_still_issues_a_verifiable_certificate(tmp_path):
    """A CA without a subjectKeyIdentifier: the node's authorityKeyIdentifier comes from the CA public key."""
    d = tmp_path / "ca"
    key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = write_ca(d, key, ski=False, days=10)
    paths = issue_node(d, "n1")
    cert = x509.load_pem_x509_certificate(open(paths.cert, "rb").read())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    cert.verify_directly_issued_by(ca_cert)
    assert cert.not_valid_after_utc <= ca_cert.not_valid_after_utc  # clamped to the CA (rule 4)
    assert mode(paths.key) == 0o600


def test_node_without_hosts_has_no_san(tmp_path):
    init_ca(tmp_path / "ca")
    paths = issue_node(tmp_path / "ca", "n1", hosts=())
    cert = x509.load_pem_x509_certificate(open(paths.cert, "rb").read())
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".", "x" * 65, "a b", None, 5])
def test_bad_node_id_is_refused_before_anything_is_read(tmp_path, bad):
    """Rule 5: a bad node id is a ConfigError naming it, even when there is no CA at all."""
    with pytest.raises(ConfigError, match="node id"):
        issue_node(tmp_path / "nowhere", bad)
    assert listing(tmp_path) == []


def test_key_permissions_follow_symlinks(tmp_path):
    """The mode checked is that of the file a symlink points to, not the link's own."""
    target = tmp_path / "real.key"
    target.write_bytes(b"k")
    link = tmp_path / "link.key"
    link.symlink_to(target)
    os.chmod(target, 0o600)
    check_key_permissions(link)
    os.chmod(target, 0o660)
    with pytest.raises(ConfigError, match=f"{link} is accessible by group/other \\(mode 660, "):
        check_key_permissions(link)
    target.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        check_key_permissions(link)


# -- BFT signing keys -------------------------------------------------------------------------------------


def test_bft_key_is_made_private_and_reused(tmp_path):
    path = str(tmp_path / "keys" / "bft.key")
    key, pub = bft_signing_key(path)
    assert mode(path) == 0o600 and os.path.getsize(path) == 32
    assert len(pub) == 64 and int(pub, 16) >= 0
    raw = open(path, "rb").read()
    key2, pub2 = bft_signing_key(path, create=False)  # loaded, not regenerated
    assert pub2 == pub and open(path, "rb").read() == raw
    sig = key2.sign(b"msg")
    bft_verify_key(pub).verify(sig, b"msg")
    with pytest.raises(InvalidSignature):
        bft_verify_key(pub).verify(sig, b"other")


def test_bft_key_in_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, pub = bft_signing_key("k.key")
    assert listing(tmp_path) == ["k.key"] and bft_signing_key("k.key")[1] == pub


def test_bft_key_missing_without_create(tmp_path):
    path = str(tmp_path / "none.key")
    with pytest.raises(ConfigError, match=f"BFT signing key {path} does not exist"):
        bft_signing_key(path, create=False)
    assert listing(tmp_path) == []


def test_bft_key_with_unsafe_mode_is_refused(tmp_path):
    path = tmp_path / "bft.key"
    bft_signing_key(str(path))
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        bft_signing_key(str(path))


@pytest.mark.parametrize("n", [0, 31, 33, 64])
def test_bft_key_of_wrong_length_is_refused(tmp_path, n):
    path = tmp_path / "bft.key"
    path.write_bytes(b"\1" * n)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match=f"expected 32 raw bytes \\(Ed25519\\), found {min(n, 33)}"):
        bft_signing_key(str(path))
    assert path.read_bytes() == b"\1" * n  # never replaced


@pytest.mark.parametrize("bad", ["", "zz" * 32, "ab" * 31, "ab" * 33, "0x" + "ab" * 31])
def test_bft_verify_key_refuses_bad_hex(bad):
    with pytest.raises(ConfigError, match=f"bft_key {bad!r}: not an Ed25519 public key"):
        bft_verify_key(bad)


def test_bft_key_path_that_is_a_directory_is_a_config_error(tmp_path):
    """Rule 5: a key path naming a (private) directory is the operator's mistake: ConfigError naming it."""
    d = tmp_path / "bft.key"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="bft.key"):
        bft_signing_key(str(d))
