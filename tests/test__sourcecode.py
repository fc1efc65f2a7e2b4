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
        [*_tool("ruff"), "check", "dwcp", "tests", "perf", "scripts"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy():
    r = subprocess.run(
        [*_tool("mypy"), "--no-error-summary", "dwcp"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
