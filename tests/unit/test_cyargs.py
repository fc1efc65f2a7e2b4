"""dwcp._ref._cyargs: the reference twins convert arguments as Cython's wrappers do."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from dwcp._ref._cyargs import request_buffer, ssize


def test_ssize_takes_index_and_overflows_past_64_bits():
    assert ssize(np.int32(7)) == 7 and ssize(-(1 << 63)) == -(1 << 63)
    with pytest.raises(OverflowError):
        ssize(1 << 63)
    with pytest.raises(TypeError):
        ssize(1.0)


@pytest.mark.skipif(
    not hasattr(ctypes, "pythonapi"), reason="the address comes from PyObject_GetBuffer (CPython)"
)
def test_request_buffer_returns_the_address_and_releases_the_buffer():
    b = bytearray(b"abcdef")
    assert request_buffer(b, writable=True) == ctypes.addressof((ctypes.c_char * 6).from_buffer(b))
    b.extend(b"g")  # no export left behind: a bytearray with a live export refuses to resize


def test_request_buffer_raises_the_exporters_own_error():
    with pytest.raises(BufferError):
        request_buffer(b"read-only", writable=True)
    assert request_buffer(b"read-only", writable=False) is not None or not hasattr(ctypes, "pythonapi")
    with pytest.raises((BufferError, ValueError)):
        request_buffer(np.zeros(8, np.uint8)[::2], writable=False)  # strided: not C-contiguous
