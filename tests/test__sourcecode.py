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


def test_every_python_m_dwcp_runs_outside_the_checkout():
    """`python -m dwcp` puts its cwd first on sys.path: run from the source tree, it would import the
    checkout (no compiled extensions under `pip install .`) instead of the installed dwcp. So every
    such subprocess in tests/, perf/ and the test base names its cwd."""
    import ast
    import glob

    missing = []
    files = [*glob.glob(os.path.join(ROOT, "tests", "**", "*.py"), recursive=True),
             *glob.glob(os.path.join(ROOT, "perf", "*.py")), *glob.glob(os.path.join(ROOT, "dwcp", "_testbase", "*.py"))]  # fmt: skip
    for path in files:
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in ("run", "Popen", "check_output", "check_call", "call"):
                continue
            argv = node.args[0] if node.args else None
            if not isinstance(argv, ast.List):
                continue
            consts = [e.value for e in argv.elts if isinstance(e, ast.Constant)]
            if any(consts[i : i + 2] == ["-m", "dwcp"] for i in range(len(consts))):
                if not any(k.arg in ("cwd", None) for k in node.keywords):
                    missing.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not missing, f"`python -m dwcp` without cwd= (pass the test's tmp_path): {missing}"
