"""Linting runs as a test: ruff over the package, tests, perf and scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name: str) -> list[str]:
    exe = shutil.which(name)
    if exe is None:
        try:
            __import__(name)
        except ImportError:
            pytest.skip(f"{name} is not installed (pip install '.[test]')")
        return [sys.executable, "-m", name]
    return [exe]


def test_ruff():
    r = subprocess.run(
        [*_tool("ruff"), "check", "dwcp", "tests", "perf", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_formatted():
    """One formatter, enforced: `ruff format` (a `# fmt: skip` keeps a hand-aligned line as written)."""
    r = subprocess.run(
        [*_tool("ruff"), "format", "--check", "dwcp", "tests", "perf", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, "run `ruff format dwcp tests perf scripts`:\n" + r.stdout + r.stderr


def test_mypy():
    r = subprocess.run(
        [*_tool("mypy"), "--no-error-summary", "dwcp"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_checks_calls_into_the_kernels(tmp_path):
    """``dwcp._backend.impl`` is typed by dwcp/_fast/*.pyi: a wrong call into a kernel is a type error."""
    bad = tmp_path / "bad_kernel_call.py"
    bad.write_text(
        "from dwcp._backend import impl as K\n"
        "K.xxh3_64('text')\n"  # a str is not a buffer
        "K.pack_header(1, 2)\n"  # too few arguments
        "h: str = K.xxh3_128(b'x')\n"  # returns bytes
        "K.no_such_kernel()\n"
    )
    r = subprocess.run(
        [*_tool("mypy"), "--no-error-summary", str(bad)], cwd=ROOT, capture_output=True, text=True
    )
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["2", "3", "4", "5"], r.stdout
