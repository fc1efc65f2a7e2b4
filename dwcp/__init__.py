"""dwcp: move large, mostly-repetitive binary state between hosts at link speed.

``dwcp.backend`` names the data-plane implementation in use ("fast" for the
Cython kernels, "ref" for the pure-Python twins; see ``dwcp._backend``).
It is resolved on first access so that ``import dwcp.errors`` stays cheap.
"""

from __future__ import annotations

from typing import Any

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
    raise AttributeError(f"module 'dwcp' has no attribute {name!r}")
