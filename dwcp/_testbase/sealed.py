"""A sealed stream for the receive kernels' tests: a 64-byte header record then a payload record, sealed by
one backend's send_sealed, optionally through a relay that flips one bit, opened by another backend."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["sealed_run"]


def sealed_run(tx: Any, rx: Any, key: bytes, payload: bytes, slot: int, file_off: int,
               receive: Callable[[int, int, int, int, Any], Any], flip: int | None = None,
               transfer_id: int = 42) -> tuple[bytes, Any, bytes, int, list[BaseException]]:  # fmt: skip
    """``tx`` seals a 64-byte "header" record then ``payload`` (send_sealed through a ``slot``-byte slot) into
    a socketpair, optionally through a relay that flips bit 0x04 of byte ``flip`` of the payload's record
    (``flip`` >= len(payload): a byte of its tag); ``rx`` opens the header with ``open_into``, and
    ``receive(sock_fd, n, file_fd, file_off, opener)`` takes the payload into a file.  Returns (opened
    header, what receive returned or raised, the file's bytes, the opener's counter, the sender's errors)."""
    from dwcp.security.aead import stream_keys

    s2r, _ = stream_keys(key, transfer_id)
    sealer, opener = tx.Aead(s2r, True), rx.Aead(s2r, False)
    header = bytes(range(64))
    a, b = socket.socketpair()
    c: socket.socket | None = None
    d: socket.socket | None = None
    sent: list[BaseException] = []

    def send() -> None:
        try:
            a.sendall(sealer.seal(header))
            tx.send_sealed(a.fileno(), sealer, payload, bytearray(slot), 5000)
            a.shutdown(socket.SHUT_WR)
        except OSError as exc:  # reported to the test
            sent.append(exc)

    def relay() -> None:  # b -> c, flipping one bit of the payload's record
        assert c is not None
        seen = 0
        try:
            while chunk := b.recv(1 << 16):
                buf = bytearray(chunk)
                at = 80 + flip - seen  # type: ignore[operator]  # after the header's record
                if 0 <= at < len(buf):
                    buf[at] ^= 0x04
                c.sendall(buf)
                seen += len(buf)
            c.shutdown(socket.SHUT_WR)
        except OSError:  # the test gave up on the stream
            pass

    threads = [threading.Thread(target=send, daemon=True)]
    src = b
    if flip is not None:
        c, d = socket.socketpair()
        threads.append(threading.Thread(target=relay, daemon=True))
        src = d
    for t in threads:
        t.start()
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    try:
        src.settimeout(5)
        rec = bytearray(80)
        got = 0
        while got < 80:
            k = src.recv_into(memoryview(rec)[got:])
            assert k, "the header record did not arrive"
            got += k
        hbuf = rec[:64]
        opener.open_into(hbuf, rec[64:])
        n = len(payload)
        try:
            r = receive(src.fileno(), n, fd, file_off, opener)
        except Exception as exc:
            r = exc
        if isinstance(r, Exception):  # unblock a sender (or relay) still writing into a full socket
            for end in (src, b):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
            assert not t.is_alive(), "a sending thread hung"
        return bytes(hbuf), r, os.pread(fd, n, file_off), opener.counter, sent
    finally:
        os.close(fd)
        for each in (a, b, c, d):
            if each is not None:
                each.close()
