"""`dwcp man` and `dwcp completion bash`, generated from the command's own definitions."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from dwcp.cli.demo import same_dwcp_env
from dwcp.cli.main import build_parser


def _dwcp(*args: str, cwd) -> str:
    r = subprocess.run([sys.executable, "-m", "dwcp", *args], capture_output=True, text=True, env=same_dwcp_env(),
                       cwd=str(cwd), timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def _commands() -> list[str]:
    import argparse

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_the_man_page_has_every_command_and_the_exit_codes(tmp_path):
    page = _dwcp("man", cwd=tmp_path)
    assert page.startswith(".TH DWCP 1 ")
    for c in _commands():
        assert f".SS dwcp {c}\n" in page, c
    assert ".SH EXIT STATUS" in page and "authentication" in page and "\\fB\\-\\-json\\fR" in page
    if shutil.which("man") and shutil.which("groff"):
        r = subprocess.run(["man", "-l", "-"], input=page, capture_output=True, text=True, timeout=60,
                           env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})  # fmt: skip
        assert r.returncode == 0 and "dwcp fetch" in r.stdout and "warning" not in r.stderr.lower(), r.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_commands_and_their_options(tmp_path):
    script = tmp_path / "dwcp.bash"
    script.write_text(_dwcp("completion", "bash", cwd=tmp_path))

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        r = subprocess.run(["bash", "-c", f'source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
                            '_dwcp; printf "%s\\n" "${COMPREPLY[@]}"'], capture_output=True, text=True, timeout=30,
                           cwd=str(tmp_path))  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert "send" in complete("dwcp", "se") and "scrub" in complete("dwcp", "sc")
    assert {"--to", "--key", "--streams"} <= set(complete("dwcp", "send", "--"))
    assert {"add", "remove", "members"} <= set(complete("dwcp", "cluster", ""))
