"""`dwcp fetch`: pull the latest verified version of a key from a daemon, resuming an interrupted one.

The object arrives on one stream as ordinary DATA frames; each chunk is verified (its chunk hash),
the whole (its digest, dwcp.digest) before the output file is fsynced and atomically renamed into
place, so an interrupted fetch never leaves a partial file at the destination.

Resume: the bytes go to ``OUT.dwcp-part``, and every second (and when the connection fails) the part
is fsynced and ``OUT.dwcp-part.json`` records the version, the chunk size and the hash of each chunk
held; a fetch that fails otherwise (a refusal, a protocol or integrity error) leaves nothing.  The next fetch to ``OUT`` re-hashes those chunks, keeps the ones that still match, and names
them in HELLO (``digest``, ``chunk_size``, ``have``): the server sends only the rest.  A part of a
version the server no longer holds is dropped and the fetch starts over, unless that version was
asked for (``digest``); a part whose whole fails the digest check is dropped.
"""

from __future__ import annotations

import json
import os
import secrets
import time

from dwcp.codec import ChunkDecoder, chunk_spans
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.digest import TreeHasher, chunk_hash
from dwcp.durable import discard, publish, pwrite_all, write_atomic
from dwcp.errors import BrokenResourceError, IntegrityError, RemoteProtocolError, StorageError
from dwcp.wire import consts as C
from dwcp.wire.messages import MAX_OBJECT_BYTES, decode_control, encode_control

from .dialer import Dialer
from .sender import TransferError, expect, expect_welcome
from .session import PROTOCOL_VERSION

__all__ = ["fetch", "PART_SUFFIX"]

PART_SUFFIX = ".dwcp-part"  # OUT's bytes so far; OUT.dwcp-part.json what they are
CHECKPOINT_S = 1.0


def _write_at(fd: int, data: memoryview, offset: int, path: str) -> None:
    try:
        pwrite_all(fd, data, offset)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc


def _load_part(state_path: str, key: str) -> dict | None:
    """The resume state beside a part, if it is one of ``key`` and well formed (else None: start over)."""
    try:
        with open(state_path) as f:
            st = json.load(f)
        ok = (st["key"] == key and isinstance(st["size"], int) and isinstance(st["chunk_size"], int)
              and len(bytes.fromhex(st["digest"])) == 16 and isinstance(st["hashes"], dict))  # fmt: skip
        return st if ok else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _held(fd: int, st: dict, tree: TreeHasher) -> dict[int, int]:
    """The chunks of a part that still hash as recorded (each added to ``tree``): index -> chunk hash."""
    held = {}
    spans = chunk_spans(st["size"], st["chunk_size"])
    for k, h in st["hashes"].items():
        i = int(k)
        if not 0 <= i < len(spans) or not isinstance(h, int):
            continue
        off, ln = spans[i]
        data = os.pread(fd, ln, off)
        if len(data) == ln and chunk_hash(data)[0] == h:
            tree.add(off, data)
            held[i] = h
    return held


def fetch(key: str, host: str, port: int, out_path: str, transport: TransportConfig, security: SecurityConfig,
          *, node_id: str = "node", digest: bytes | None = None) -> dict:  # fmt: skip
    """Fetch ``key`` from the daemon at ``host:port`` into ``out_path``: its latest version, or the one
    whose object digest is ``digest`` (an older version it still holds), resuming a part of it an
    interrupted fetch left (module docstring).  Returns the report (``resumed_chunks``: how many came
    from the part); raises TransferError (refused), IntegrityError (a chunk or the whole failed
    verification), StorageError."""
    from dwcp.storage import MAX_CHUNKS, min_chunk_size, validate_key

    key = validate_key(key)
    dest = os.path.abspath(out_path)
    part, state_path = dest + PART_SUFFIX, dest + PART_SUFFIX + ".json"
    st = _load_part(state_path, key)
    if st is not None and digest is not None and st["digest"] != digest.hex():
        st = None  # a part of another version than the one asked for
    try:
        return _fetch(key, host, port, dest, part, state_path, st, transport, security, node_id, digest,
                      MAX_CHUNKS, min_chunk_size)  # fmt: skip
    except TransferError as exc:
        if (
            st is None
            or digest is not None
            or exc.code != C.ERR_BAD_FIELD
            or "holds no version" not in str(exc)
        ):
            raise
        discard(part)  # the part's version is gone from the server: the latest, from the start
        discard(state_path)
        return _fetch(key, host, port, dest, part, state_path, None, transport, security, node_id, None,
                      MAX_CHUNKS, min_chunk_size)  # fmt: skip


def _fetch(key, host, port, dest, part, state_path, st, transport, security, node_id, digest, max_chunks,
           min_chunk_size) -> dict:  # fmt: skip
    t0 = time.perf_counter()
    fd = os.open(
        part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (0 if st else os.O_TRUNC), 0o600
    )
    hashes: dict[int, int] = {}
    tree = None
    if st is not None:  # what the part still holds, re-hashed: only those are named to the server
        tree = TreeHasher(st["size"])
        hashes = _held(fd, st, tree)
    fs, _ = Dialer(transport, security).dial(host, port)
    tid = secrets.randbits(63) | 1
    ok = False
    meta: dict = {}  # the version the part holds, once known; cleared when the part is not worth keeping

    def checkpoint() -> None:  # the part's bytes are durable before the state names them
        os.fsync(fd)
        write_atomic(state_path, json.dumps({**meta, "hashes": {str(i): h for i, h in hashes.items()}}))

    try:
        hello = {"v": PROTOCOL_VERSION, "role": "control", "op": "fetch", "key": key, "node": node_id}
        if digest is not None:
            hello["digest"] = digest.hex()
        if st is not None:
            n = -(-st["size"] // st["chunk_size"])
            have = bytearray(-(-n // 8))
            for i in hashes:
                have[i >> 3] |= 1 << (i & 7)
            hello.update(digest=st["digest"], chunk_size=st["chunk_size"], have=have.hex())
        fs.send(encode_control(C.FRAME_HELLO, tid, hello))
        welcome = expect_welcome(fs, f"{host}:{port}")
        if welcome.get("mode") != "fetch" or not {"size", "digest", "chunk_size"} <= welcome.keys():
            raise RemoteProtocolError("malformed fetch answer", C.ERR_MALFORMED)
        want = hello.get("digest")
        if want is not None and welcome["digest"] != want:
            raise RemoteProtocolError(f"asked for version {want} of {key!r}, offered {welcome['digest']}",
                                      C.ERR_BAD_FIELD)  # fmt: skip
        size, digest, chunk_size = welcome["size"], bytes.fromhex(welcome["digest"]), welcome["chunk_size"]
        if size > MAX_OBJECT_BYTES:
            raise RemoteProtocolError(f"object of {size} bytes is too large", C.ERR_BAD_LENGTH)
        if chunk_size < min_chunk_size(size):  # its chunk list is allocated below: bounded like a receiver's
            raise RemoteProtocolError(f"{size} bytes in {chunk_size}-byte chunks is more than {max_chunks} chunks",
                                      C.ERR_BAD_LENGTH)  # fmt: skip
        if st is not None and (size, chunk_size) != (st["size"], st["chunk_size"]):
            raise RemoteProtocolError(f"resuming {key}: the server answered {size} bytes in {chunk_size}-byte "
                                      "chunks, not the part's", C.ERR_BAD_FIELD)  # fmt: skip
        meta.update(key=key, digest=digest.hex(), size=size, chunk_size=chunk_size)
        if tree is None:
            tree = TreeHasher(size)  # the digest's leaves, hashed as each verified chunk is in hand
            os.ftruncate(fd, size)
        spans = chunk_spans(size, chunk_size)
        # written with pwrite, never through a mapping: a disk that fills up would kill a mapped write
        # with SIGBUS, where pwrite says ENOSPC
        buf = memoryview(bytearray(chunk_size if size else 0))
        wire = 0
        dec = ChunkDecoder()
        got = bytearray(len(spans))
        for i in hashes:
            got[i] = 1
        last = time.monotonic()
        for _ in range(len(spans) - len(hashes)):
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
            _write_at(fd, buf[:ln], off, dest)
            tree.add(off, buf[:ln])
            got[idx] = 1
            hashes[idx] = h.raw_hash
            wire += C.HEADER_SIZE + h.enc_len
            if time.monotonic() - last >= CHECKPOINT_S:
                checkpoint()
                last = time.monotonic()
        done = expect(fs, C.FRAME_DONE)
        # only the leaves a chunk boundary cut are read back
        if tree.root(lambda o, n: os.pread(fd, n, o)) != digest or done.get("digest") != digest.hex():
            meta.clear()  # a part that fails the whole is worth nothing: not kept
            raise IntegrityError(f"fetched {key} fails its digest check", C.ERR_CHECKSUM)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        publish(part, dest)
        discard(state_path)
        ok = True
        try:
            fs.send(encode_control(C.FRAME_CLOSE, tid, {"reason": "done"}))
        except OSError:
            pass
    except (BrokenResourceError, OSError):
        raise  # the network went: what arrived is kept for a resume (finally)
    except BaseException:
        meta.clear()  # the server misbehaved or refused: nothing of this attempt is kept
        raise
    finally:
        fs.close()
        if not ok and meta and fd >= 0:  # keep what arrived, for the next fetch to resume
            try:
                checkpoint()
            except OSError:
                meta.clear()
        if fd >= 0:
            os.close(fd)
        if not ok and not meta:
            discard(part)
            discard(state_path)
    elapsed = time.perf_counter() - t0
    return {"key": key, "from": f"{host}:{port}", "path": dest, "size": size, "digest": digest.hex(),
            "verified": True, "wire_bytes": wire, "seconds": elapsed, "resumed_chunks": welcome.get("resumed_chunks", 0),
            "throughput_bytes_per_s": size / elapsed if elapsed else 0.0}  # fmt: skip
