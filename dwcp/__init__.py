"""dwcp: move large, mostly-repetitive binary state between hosts at link speed.

``dwcp.backend`` names the data-plane implementation in use ("fast" for the
Cython kernels, "ref" for the pure-Python twins; see ``dwcp._backend``).
It is resolved on first access so that ``import dwcp.errors`` stays cheap.

dwcp makes no BLAS call, but numpy's OpenBLAS starts a worker thread per
core that busy-waits: ``OPENBLAS_NUM_THREADS`` defaults to 1 here (unless
set) before numpy is first imported: a 1 GiB loopback send from a file
used 11% less CPU (median of 10 alternating pairs; perf had shown the
workers' spinning as 5% of the samples).  A process that imported numpy
before dwcp keeps its threads.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from ._version import __version__
from .errors import (
    BrokenResourceError,
    ClosedResourceError,
    ConfigError,
    DWCPError,
    IntegrityError,
    InternalError,
    InvalidKeyError,
    KeyBusyError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    StorageError,
)

__all__ = [
    "__version__",
    "send",
    "fetch",
    "Daemon",
    "load_config",
    "backend",
    "backend_features",
    "DWCPError",
    "ConfigError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "IntegrityError",
    "ClosedResourceError",
    "BrokenResourceError",
    "InternalError",
    "InvalidKeyError",
    "KeyBusyError",
    "StorageError",
]


def __getattr__(name: str) -> Any:
    if name in ("backend", "backend_features"):
        from . import _backend

        return getattr(_backend, name)
    if name in ("send", "fetch", "Daemon", "load_config"):  # the embedding API (dwcp.api), imported on use
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dwcp' has no attribute {name!r}")
