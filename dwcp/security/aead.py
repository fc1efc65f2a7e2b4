"""Sealed records: a data stream's bulk bytes as large AES-256-GCM records keyed through its TLS session.

Theory of operation
-------------------
TLS caps a record at 16 KiB, and Python's ssl reads one record per call: a
1 GiB object is ~130 000 reads of a record header and a record body, each a
system call and a trip through the ssl module, plus the decrypting copy.  A
data stream of a sealed transfer instead runs the mutual-TLS handshake and
its HELLO as always -- so the peer is authenticated exactly as before --
and then both sides close the TLS session (``unwrap``: close_notify both
ways) and carry on over the same TCP connection with records of their own:

* Suite: AES-256-GCM (NIST SP 800-38D), the cipher TLS 1.3 itself uses,
  through the process's own libcrypto (dwcp/_fast/aead.h).  No home-made
  cryptography: a standard AEAD, a standard KDF, a fresh key per connection.
* Keys: the sender draws a 32-byte secret per data stream and sends it in
  that stream's HELLO, *inside* the authenticated, encrypted TLS session;
  both sides derive one key per direction with HKDF-SHA256 (RFC 5869):
  ``PRK = HKDF-Extract(salt=transfer_id as u64 BE, IKM=secret)``,
  ``key_dir = HKDF-Expand(PRK, "dwcp sealed v1 " + dir, 32)`` with dir
  ``"s2r"`` (sender to receiver) or ``"r2s"``.  Nobody without the TLS
  session's keys sees the secret; a replacement stream gets a new one.
* Nonces: record i of a key uses nonce ``0^32 || i`` (big-endian u64), so
  no nonce repeats under a key; a dropped, replayed or reordered record
  fails its tag.
* Framing: every frame is two records: its 64-byte header (sealed: an
  attacker can neither read a header nor make a receiver act on one it
  altered), then its payload as one record (when it has one).  A RAW chunk's
  payload record is decrypted block by block into a 1 MiB slot, hashed and
  written from there (dwcp/_fast/engine.pyx): one copy out of the socket,
  the decryption in place, no Python object.
* A tag that fails is ``ForgedRecordError`` (code ERR_FORGED): the stream is
  dropped, never NACKed and read on.

The control stream stays TLS throughout (few, small frames).  Either side
turns this off with ``[security] data_records = "tls"``; HELLO offers it as
the capability ``"sealed"`` only when the stream is TLS and AES-GCM loaded,
and WELCOME's caps say whether the receiver agreed.

Rules
-----
1. ``available()`` says whether AES-256-GCM could be loaded here, and why
   not (the libcrypto Python's ssl module uses, found in /proc/self/maps).
2. ``new_secret()`` is 32 bytes from ``secrets``; ``stream_keys(secret,
   transfer_id)`` -> (sender-to-receiver key, receiver-to-sender key).
3. Both sides call ``unwrap`` right after the data HELLO: the sender after
   sending it, the receiver after accepting it.  Nothing else is read or
   written on the TLS layer in between.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import hmac
import re
import secrets
import ssl

from dwcp._backend import impl as _k

__all__ = ["SUITE", "CAP", "available", "new_secret", "stream_keys", "hkdf_sha256"]

SUITE = "aes-256-gcm"
CAP = "sealed"
SECRET_BYTES = 32
_INFO = b"dwcp sealed v1 "

_state: tuple[bool, str] | None = None


def _libcrypto() -> str | None:
    """The libcrypto Python's ssl module loaded (the same one, so the same FIPS/provider setup)."""
    assert ssl.OPENSSL_VERSION  # the ssl module (and its libcrypto) is loaded
    try:
        with open("/proc/self/maps") as f:
            found = sorted(set(re.findall(r"(/\S*libcrypto\.so[.\d]*)\s*$", f.read(), re.M)))
    except OSError:
        found = []
    if found:
        return found[0]
    return ctypes.util.find_library("crypto")


def available() -> tuple[bool, str]:
    """(whether sealed records can be used here, why or why not); probed once."""
    global _state
    if _state is None:
        path = _libcrypto()
        if path is None:
            _state = (False, "no libcrypto found (Python's ssl module is linked statically?)")
        elif not _k.aead_load(path):
            _state = (False, f"{path} lacks the EVP AES-256-GCM functions")
        else:
            _state = (True, f"AES-256-GCM from {path} ({ssl.OPENSSL_VERSION})")
    return _state


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256 (extract, then expand)."""
    if not 0 < length <= 255 * 32:
        raise ValueError(f"HKDF-SHA256 gives 1 to {255 * 32} bytes, not {length}")
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def stream_keys(secret: bytes, transfer_id: int) -> tuple[bytes, bytes]:
    """(sender-to-receiver key, receiver-to-sender key) of one data stream (rule 2)."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a stream secret has {SECRET_BYTES} bytes, got {len(secret)}")
    salt = transfer_id.to_bytes(8, "big")
    return (hkdf_sha256(secret, salt, _INFO + b"s2r", 32), hkdf_sha256(secret, salt, _INFO + b"r2s", 32))
