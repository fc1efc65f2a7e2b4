"""Arguments as Cython converts them, for the reference twins in ``dwcp/_ref``.

A ``_fast`` function's Cython wrapper converts each argument before its body
runs: a ``Py_ssize_t`` through ``__index__`` (OverflowError past 64 bits), a
typed memoryview by asking the object for a buffer with fixed flags, so that
a wrong argument raises the exporter's own error (BufferError for bytes,
ValueError for a read-only or strided numpy array).  The twins call these
two helpers so that both raise the same exception type for the same input.

On CPython the buffer request goes through ``PyObject_GetBuffer`` via
ctypes, with the ``Py_buffer`` struct laid out below (the one copy in the
project); other interpreters get the common cases, approximately.
"""

from __future__ import annotations

import ctypes
import operator

__all__ = ["ssize", "request_buffer"]


def ssize(x) -> int:
    """A ``Py_ssize_t`` argument: __index__, OverflowError beyond 64 bits."""
    i = operator.index(x)
    if not -(1 << 63) <= i < (1 << 63):
        raise OverflowError("Python int too large to convert to C ssize_t")
    return i


class _Py_buffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyBUF_WRITABLE = 0x0001
_PyBUF_FORMAT = 0x0004
_PyBUF_C_CONTIGUOUS = 0x0038  # 0x0020 | PyBUF_STRIDES

_pyapi = getattr(ctypes, "pythonapi", None)  # CPython only
if _pyapi is not None:
    # indexing (not attribute access) gives this module its own function objects: setting argtypes
    # on the shared ``pythonapi.PyObject_GetBuffer`` would change it for every other ctypes user
    _get_buffer = _pyapi["PyObject_GetBuffer"]
    _get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Py_buffer), ctypes.c_int]
    _get_buffer.restype = ctypes.c_int
    _release_buffer = _pyapi["PyBuffer_Release"]
    _release_buffer.argtypes = [ctypes.POINTER(_Py_buffer)]
    _release_buffer.restype = None


def request_buffer(obj, writable: bool) -> int | None:
    """Ask ``obj`` for the buffer Cython asks for a ``[::1]`` memoryview (C-contiguous, with its format,
    writable if ``writable``), so that the exporter raises its own error; release it at once.

    Returns the buffer's address (0 for a NULL one) on CPython, None elsewhere.
    """
    if _pyapi is None:  # other interpreters: the common cases, approximately
        mv = memoryview(obj)
        if writable and mv.readonly:
            raise BufferError("Object is not writable.")
        if not mv.c_contiguous:
            raise BufferError("buffer is not C-contiguous")
        return None
    view = _Py_buffer()
    flags = _PyBUF_C_CONTIGUOUS | _PyBUF_FORMAT | (_PyBUF_WRITABLE if writable else 0)
    _get_buffer(obj, ctypes.byref(view), flags)  # a set error is raised by ctypes
    try:
        return view.buf or 0
    finally:
        _release_buffer(ctypes.byref(view))
