"""A real Prometheus for tests: scraping given targets, with rule files, on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence

__all__ = ["prometheus"]


@contextlib.contextmanager
def prometheus(root, targets: list[str], rule_files: Sequence[str] = (), job: str = "dwcp") -> Iterator:
    """Run `prometheus` (1 s scrapes and evaluations) under ``root`` until the first scrape of ``job`` has
    data; yields ``query(promql) -> the API's answer`` (with ``query.api``, the API's base URL)."""
    cfg = root / "prom.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                   + ("rule_files:\n" + "".join(f"  - {f}\n" for f in rule_files) if rule_files else "")
                   + f"scrape_configs:\n  - job_name: {job}\n    static_configs:\n"
                   + "".join(f"      - targets: ['{t}']\n" for t in targets))  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={root / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1/"

    def query(q: str) -> dict:
        with urllib.request.urlopen(api + "query?" + urllib.parse.urlencode({"query": q}), timeout=10) as r:
            return json.load(r)

    query.api = api  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + 60
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus never scraped {targets}")
            try:
                if query("dwcp_build_info")["data"]["result"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(1)
        yield query
    finally:
        proc.terminate()
        proc.wait(30)
