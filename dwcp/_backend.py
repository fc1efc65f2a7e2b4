"""Backend selection: the Cython kernels (``fast``) or their twins (``ref``).

``DWCP_IMPL`` = ``auto`` (default) | ``fast`` | ``ref``.

* ``fast`` -- the Cython extensions; ImportError if they are not built.
* ``ref``  -- the pure-Python twins (slow; for tests and debugging).
* ``auto`` -- ``fast`` on CPython, and a missing extension is an
  ImportError, never a silent fallback: a dwcp that quietly runs 100x slower
  is a worse failure than one that refuses to start.  Other interpreters
  get ``ref``.

The selected implementation is published as ``backend`` ("fast"/"ref") and
``backend_features`` (what the native build has), logged by the daemon at
start-up and exported as a metric.
"""

from __future__ import annotations

import os
import platform
import types
from typing import TYPE_CHECKING, Any

__all__ = ["backend", "backend_features", "impl", "load", "IMPLS"]

IMPLS = ("fast", "ref")

# The kernel modules, by the name they share in dwcp/_fast and dwcp/_ref.
_MODULES = ("ring", "xorzrle", "framing", "stats", "uring", "engine")


def load(name: str) -> types.SimpleNamespace:
    """Return a namespace with every kernel of implementation ``name``.

    Tests use this to get both implementations side by side whatever
    DWCP_IMPL says.
    """
    if name not in IMPLS:
        raise ValueError(f"unknown dwcp implementation {name!r}; expected one of {IMPLS}")
    import importlib

    ns: dict[str, Any] = {"name": name}
    for mod in _MODULES:
        m = importlib.import_module(f"dwcp._{name}.{mod}")
        for attr in m.__all__:
            ns[attr] = getattr(m, attr)
    return types.SimpleNamespace(**ns)


def _select() -> str:
    want = os.environ.get("DWCP_IMPL", "auto").strip().lower() or "auto"
    if want in IMPLS:
        return want
    if want != "auto":
        raise ImportError(f"DWCP_IMPL={want!r}: expected auto, fast or ref")
    if platform.python_implementation() == "CPython":
        return "fast"
    return "ref"


backend = _select()
if TYPE_CHECKING:  # what mypy checks calls against: the .pyi stubs of dwcp/_fast (a typed facade)
    from dwcp._fast import _kernels as impl
try:
    impl = load(backend)  # type: ignore[assignment]  # the namespace has exactly the stubs' names
except ImportError as exc:
    if backend == "fast":
        raise ImportError(
            "dwcp's Cython extensions are not built (install with `pip install .`, "
            "or set DWCP_IMPL=ref to run the slow pure-Python reference on purpose): "
            f"{exc}"
        ) from exc
    raise

backend_features: dict[str, object] = dict(getattr(impl, "features", lambda: {})())
backend_features["impl"] = backend
# Whether the data-plane engine can drive io_uring here (fast backend, and the kernel allows
# io_uring_setup); otherwise it runs on epoll + splice/sendmsg or the reference Ring.
backend_features["io_uring"] = bool(impl.uring_available())
