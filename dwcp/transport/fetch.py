"""`dwcp fetch`: pull the latest verified version of a key from a daemon.

The object arrives on one stream as ordinary DATA frames; each chunk is
verified (xxh3-64), the whole (its digest, dwcp.digest) before the output file is fsynced
and atomically renamed into place, so an interrupted fetch never leaves a
partial file at the destination.
"""

from __future__ import annotations

import os
import secrets
import time

from dwcp.codec import ChunkDecoder, chunk_spans
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.digest import TreeHasher
from dwcp.durable import create_temp, discard, publish, pwrite_all
from dwcp.errors import BrokenResourceError, IntegrityError, RemoteProtocolError, StorageError
from dwcp.wire import consts as C
from dwcp.wire.messages import MAX_OBJECT_BYTES, decode_control, encode_control

from .dialer import Dialer
from .sender import TransferError, expect
from .session import PROTOCOL_VERSION

__all__ = ["fetch"]


def _write_at(fd: int, data: memoryview, offset: int, path: str) -> None:
    try:
        pwrite_all(fd, data, offset)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc


def fetch(key: str, host: str, port: int, out_path: str, transport: TransportConfig, security: SecurityConfig,
          *, node_id: str = "node", digest: bytes | None = None) -> dict:  # fmt: skip
    """Fetch ``key`` from the daemon at ``host:port`` into ``out_path``: its latest version, or the one
    whose object digest is ``digest`` (an older version it still holds).  Returns the report; raises
    TransferError (refused), IntegrityError (a chunk or the whole failed verification), StorageError."""
    from dwcp.storage import MAX_CHUNKS, min_chunk_size, validate_key

    key = validate_key(key)
    t0 = time.perf_counter()
    fs, _ = Dialer(transport, security).dial(host, port)
    tid = secrets.randbits(63) | 1
    dest = os.path.abspath(out_path)
    fd, tmp = create_temp(dest)  # 0600, as the temporary file always was
    ok = False
    try:
        hello = {"v": PROTOCOL_VERSION, "role": "control", "op": "fetch", "key": key, "node": node_id}
        if digest is not None:
            hello["digest"] = digest.hex()
        fs.send(encode_control(C.FRAME_HELLO, tid, hello))
        welcome = expect(fs, C.FRAME_WELCOME)
        if welcome.get("mode") != "fetch" or not {"size", "digest", "chunk_size"} <= welcome.keys():
            raise RemoteProtocolError("malformed fetch answer", C.ERR_MALFORMED)
        if digest is not None and welcome["digest"] != digest.hex():
            raise RemoteProtocolError(f"asked for version {digest.hex()} of {key!r}, offered {welcome['digest']}",
                                      C.ERR_BAD_FIELD)  # fmt: skip
        size, digest, chunk_size = welcome["size"], bytes.fromhex(welcome["digest"]), welcome["chunk_size"]
        if size > MAX_OBJECT_BYTES:
            raise RemoteProtocolError(f"object of {size} bytes is too large", C.ERR_BAD_LENGTH)
        if chunk_size < min_chunk_size(size):  # its chunk list is allocated below: bounded like a receiver's
            raise RemoteProtocolError(f"{size} bytes in {chunk_size}-byte chunks is more than {MAX_CHUNKS} chunks",
                                      C.ERR_BAD_LENGTH)  # fmt: skip
        spans = chunk_spans(size, chunk_size)
        # written with pwrite, never through a mapping: a disk that fills up would kill a mapped write
        # with SIGBUS, where pwrite says ENOSPC
        buf = memoryview(bytearray(chunk_size if size else 0))
        wire = 0
        dec = ChunkDecoder()
        tree = TreeHasher(size)  # the digest's leaves, hashed as each verified chunk is in hand
        got = bytearray(len(spans))
        for _ in spans:
            h = fs.recv_header()
            if h is None:
                raise BrokenResourceError("server closed the connection mid-object")
            if h.frame_type == C.FRAME_ERROR:
                msg = decode_control(h, fs.recv_payload(h))
                raise TransferError.refused(msg["message"], msg["code"])
            if h.frame_type != C.FRAME_DATA or h.codec in C.DELTA_CODECS:
                raise RemoteProtocolError(
                    f"unexpected frame {h.frame_type}/{h.codec} in a fetch", C.ERR_BAD_FRAME_TYPE
                )
            idx, rem = divmod(h.offset, chunk_size)
            if rem or idx >= len(spans) or got[idx] or h.raw_len != spans[idx][1]:
                raise RemoteProtocolError(
                    f"chunk at offset {h.offset} does not fit the object", C.ERR_BAD_LENGTH
                )
            payload = fs.recv_payload(h)
            off, ln = spans[idx]
            dec.decode(h, payload, out=buf[:ln])
            _write_at(fd, buf[:ln], off, out_path)
            tree.add(off, buf[:ln])
            got[idx] = 1
            wire += C.HEADER_SIZE + h.enc_len
        done = expect(fs, C.FRAME_DONE)
        # only the leaves a chunk boundary cut are read back
        if tree.root(lambda o, n: os.pread(fd, n, o)) != digest or done.get("digest") != digest.hex():
            raise IntegrityError(f"fetched {key} fails its digest check", C.ERR_CHECKSUM)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        publish(tmp, dest)
        ok = True
        try:
            fs.send(encode_control(C.FRAME_CLOSE, tid, {"reason": "done"}))
        except OSError:
            pass
    finally:
        fs.close()
        if fd >= 0:
            os.close(fd)
        if not ok:
            discard(tmp)
    elapsed = time.perf_counter() - t0
    return {"key": key, "from": f"{host}:{port}", "path": out_path, "size": size, "digest": digest.hex(),
            "verified": True, "wire_bytes": wire, "seconds": elapsed,
            "throughput_bytes_per_s": size / elapsed if elapsed else 0.0}  # fmt: skip
