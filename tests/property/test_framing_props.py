"""Header parse is total: any 64 bytes give a header or RemoteProtocolError,
and the Cython and reference parsers agree on which (and on the code)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp.errors import LocalProtocolError, RemoteProtocolError
from dwcp.wire import consts as C


def outcome(fn, *args):
    try:
        r = fn(*args)
    except (RemoteProtocolError, LocalProtocolError) as e:
        return (type(e).__name__, e.code, str(e))
    except (ValueError, OverflowError) as e:
        return (type(e).__name__, None, None)
    return r.astuple() if hasattr(r, "astuple") else r


@given(st.binary(min_size=64, max_size=64))
def test_parse_any_bytes(fast, ref, data):
    a, b = outcome(fast.parse_header, data), outcome(ref.parse_header, data)
    assert a == b
    if isinstance(a, tuple) and a and a[0] == "RemoteProtocolError":
        assert a[1] in (C.ERR_BAD_MAGIC, C.ERR_BAD_HEADER_CHECKSUM)


fields = st.tuples(
    st.sampled_from(sorted(C.FRAME_TYPES) + [0, max(C.FRAME_TYPES) + 1]),
    st.sampled_from(sorted(C.CODECS) + [10, 255]),
    st.integers(0, 3),
    st.integers(0, 2**64 - 1),
    st.one_of(st.integers(0, 2**20), st.integers(0, 2**64 - 1)),
    st.one_of(st.integers(0, 4096), st.integers(0, 2**32 - 1)),
    st.one_of(st.integers(0, 4096), st.integers(0, 2**32 - 1)),
    st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    st.one_of(st.just(C.ZERO_DIGEST), st.binary(min_size=16, max_size=16)),
    st.integers(0, 2**64 - 1),
)


@given(fields)
def test_pack_agrees_and_roundtrips(fast, ref, f):
    a, b = outcome(fast.pack_header, *f), outcome(ref.pack_header, *f)
    assert a == b
    if isinstance(a, bytes):
        assert fast.parse_header(a).astuple() == ref.parse_header(a).astuple() == f


@pytest.mark.parametrize("flip", range(64 * 8))
def test_every_single_bit_flip_is_caught(impl, flip):
    h = bytearray(impl.pack_header(C.FRAME_DATA, C.CODEC_ZSTD, 0, 1, 0, 4096, 10, raw_hash=5))
    h[flip // 8] ^= 1 << (flip % 8)
    with pytest.raises(RemoteProtocolError):
        impl.parse_header(bytes(h))
