"""Build the dwcp Cython extensions (one per data-plane subsystem).

build_ext switches (and env vars): --cython-always (DWCP_CYTHON_ALWAYS),
--cython-annotate (DWCP_CYTHON_ANNOTATE), --cython-directives
(DWCP_CYTHON_DIRECTIVES, "k=v,k=v").  DWCP_DEBUG=1 compiles the debug
macro in and turns on linetrace.  DWCP_OPT_CFLAGS overrides the portable
optimisation flags, e.g. DWCP_OPT_CFLAGS="-O3 -march=native".
DWCP_ONLY=ring,xorzrle limits an in-place developer build to some modules.
"""

from __future__ import annotations

import os
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ("ring", "xorzrle", "framing", "stats", "uring", "engine")
CYTHON_DEPENDENCY = "Cython>=3.0.10,<3.4"


def _version() -> str:
    with open(os.path.join(HERE, "dwcp", "_version.py")) as f:
        m = re.search(r'__version__\s*=\s*"([^"]+)"', f.read())
    assert m is not None
    return m.group(1)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


DEBUG = _env_flag("DWCP_DEBUG")
# -O2: portable and fast; -fno-strict-aliasing: the kernels read words out
# of byte buffers through memcpy, but be safe with any pointer casts.
# -march=native only on request (wheels must run on any x86-64/aarch64).
OPT_CFLAGS = os.environ.get("DWCP_OPT_CFLAGS", "-O3").split()
CFLAGS = [*OPT_CFLAGS, "-fno-strict-aliasing", "-std=gnu11"]
if DEBUG:
    CFLAGS += ["-O0", "-g", "-UNDEBUG"]


def _extensions() -> list[Extension]:
    only = [m for m in os.environ.get("DWCP_ONLY", "").split(",") if m]
    exts = []
    for mod in MODULES:
        if only and mod not in only:
            continue
        src = f"dwcp/_fast/{mod}.pyx"
        exts.append(
            Extension(
                f"dwcp._fast.{mod}",
                [src],
                include_dirs=["dwcp/_fast", "dwcp/_fast/vendor"],
                extra_compile_args=CFLAGS,
                extra_link_args=[] if DEBUG else ["-s"],  # stripped: no debug sections in a wheel
                define_macros=[("DWCP_DEBUG", "1" if DEBUG else "0"), ("XXH_INLINE_ALL", "1")]
                + ([("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []),
            )
        )
    return exts


class build_ext(_build_ext):
    user_options = _build_ext.user_options + [
        ("cython-always", None, "run cythonize() even if .c files are present"),
        ("cython-annotate", None, "produce a colorized HTML version of the Cython source"),
        ("cython-directives=", None, "Cython compiler directives (k=v,k=v)"),
    ]
    boolean_options = _build_ext.boolean_options + ["cython-always", "cython-annotate"]

    def initialize_options(self) -> None:
        super().initialize_options()
        self.cython_always = _env_flag("DWCP_CYTHON_ALWAYS")
        self.cython_annotate = _env_flag("DWCP_CYTHON_ANNOTATE")
        self.cython_directives = os.environ.get("DWCP_CYTHON_DIRECTIVES")

    def finalize_options(self) -> None:
        # Cythonize here rather than at import time, so sdists that ship the
        # generated .c build without Cython.
        have_c = all(os.path.exists(f"dwcp/_fast/{m}.c") for m in MODULES)
        if self.cython_always or not have_c or any(
            os.path.getmtime(f"dwcp/_fast/{m}.pyx") > os.path.getmtime(f"dwcp/_fast/{m}.c")
            for m in MODULES
            if os.path.exists(f"dwcp/_fast/{m}.c")
        ):
            from Cython.Build import cythonize

            directives: dict[str, object] = {"language_level": "3", "embedsignature": True}
            if DEBUG:
                directives["linetrace"] = True
            if self.cython_directives:
                for kv in self.cython_directives.split(","):
                    k, _, v = kv.partition("=")
                    directives[k.strip()] = {"true": True, "false": False}.get(v.strip().lower(), v.strip())
            self.distribution.ext_modules[:] = cythonize(
                self.distribution.ext_modules,
                compiler_directives=directives,
                annotate=self.cython_annotate,
                force=self.cython_always,
            )
        else:
            for ext in self.distribution.ext_modules:
                ext.sources = [s[:-4] + ".c" if s.endswith(".pyx") else s for s in ext.sources]
        super().finalize_options()


if __name__ == "__main__" or "setuptools" in sys.modules:
    setup(
        version=_version(),
        ext_modules=_extensions(),
        cmdclass={"build_ext": build_ext},
    )
