"""What importing dwcp does to the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SHOW = "import dwcp, numpy, os; print(os.environ.get('OPENBLAS_NUM_THREADS'), len(os.listdir('/proc/self/task')))"


@pytest.mark.parametrize("given, want", [(None, "1"), ("2", "2")])
def test_openblas_workers_are_off_unless_the_user_asks(given, want):
    """dwcp makes no BLAS call; OpenBLAS's spinning workers cost a send CPU.  A user's setting stands."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    out = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True)
    value, tasks = out.stdout.split()
    assert value == want
    if given is None:
        assert tasks == "1"  # no OpenBLAS worker thread was started
