"""Sans-IO frame reader: bytes in, (header, payload) frames out.

Rules
-----
1. ``receive_data(b"")`` means end of stream.  End of stream between
   frames is a clean ``EOF``; inside a frame it is
   ``RemoteProtocolError(ERR_TRUNCATED)``.
2. A header is parsed (and every length in it bounded, see
   dwcp.wire.consts) as soon as its 64 bytes are here, before waiting for
   the payload; the reader never buffers more than one frame's header +
   payload beyond what the caller has not yet drained, and refuses
   (``LocalProtocolError``) to buffer past ``max_buffer_bytes``.
3. Errors are sticky: after a RemoteProtocolError the reader is in ERROR
   and every later call raises the same error again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dwcp._backend import impl as _k
from dwcp.errors import LocalProtocolError, RemoteProtocolError
from dwcp.wire import consts as C

__all__ = ["Frame", "FrameReader", "NEED_DATA", "EOF"]


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
EOF = _Sentinel("EOF")


@dataclass(frozen=True, slots=True)
class Frame:
    header: object  # type of header is FrameHeader (either backend)
    payload: bytes


class FrameReader:
    def __init__(self, *, max_buffer_bytes: int = C.HEADER_SIZE + C.MAX_ENC_LEN + (4 << 20)) -> None:
        if max_buffer_bytes < C.HEADER_SIZE + C.MAX_ENC_LEN:
            raise ValueError("max_buffer_bytes must hold at least one maximal frame")
        self._buf = bytearray()
        self._pos = 0  # consumed prefix of _buf (compacted lazily)
        self._hdr: Any = None  # the parsed header of the frame being read
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self.max_buffer_bytes = max_buffer_bytes

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def receive_data(self, data) -> None:
        if self._error is not None:
            raise self._error
        if self._eof:
            raise LocalProtocolError("receive_data after end of stream")
        if not data:
            self._eof = True
            return
        if self.buffered + len(data) > self.max_buffer_bytes:
            raise LocalProtocolError(
                f"frame reader would buffer {self.buffered + len(data)} bytes (max {self.max_buffer_bytes}); "
                "drain next_frame() before feeding more"
            )
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self):
        """A ``Frame``, ``NEED_DATA`` or ``EOF``."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next(self):
        avail = len(self._buf) - self._pos
        if self._hdr is None:
            if avail < C.HEADER_SIZE:
                if self._eof:
                    if avail == 0:
                        return EOF
                    raise RemoteProtocolError(
                        f"stream ended inside a frame header ({avail} of {C.HEADER_SIZE} bytes)",
                        C.ERR_TRUNCATED,
                    )
                return NEED_DATA
            self._hdr = _k.parse_header(self._buf, self._pos)
            self._pos += C.HEADER_SIZE
            avail -= C.HEADER_SIZE
        need = self._hdr.enc_len
        if avail < need:
            if self._eof:
                raise RemoteProtocolError(
                    f"stream ended inside a frame payload ({avail} of {need} bytes)", C.ERR_TRUNCATED
                )
            return NEED_DATA
        payload = bytes(self._buf[self._pos : self._pos + need])
        self._pos += need
        frame = Frame(self._hdr, payload)
        self._hdr = None
        return frame
