"""Shared helpers for perf/ scripts: medians, peer tools, JSON output."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def median_time(fn: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    """Median wall seconds of ``runs`` calls (after one warm-up call)."""
    fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def ensure_tool(name: str, apt_package: str | None = None) -> str | None:
    """Path of a peer CLI tool, installing it with apt-get when missing and allowed."""
    path = shutil.which(name)
    if path or os.environ.get("DWCP_PERF_NO_INSTALL"):
        return path
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", apt_package or name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return shutil.which(name)


def machine() -> dict:
    import dwcp

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "dwcp_backend": dwcp.backend,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so ``finally`` and ``with`` blocks remove what a
    script set up (network namespaces, daemons, files); Python's default just dies."""

    def bye(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, bye)


def write_json(result: dict, out: str | None, default_name: str) -> str:
    path = out or os.path.join(RESULTS, default_name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return path


# Load generators for request/response systems (the consensus and catalog benchmarks): ``op(k)`` does
# request number k and returns when it is done.
def fixed_rate(
    op: Callable[[int], object], rate: float, seconds: float, base: int, threads: int = 8
) -> list[float]:
    lat: list[float] = []
    t0 = time.perf_counter()
    total = int(rate * seconds)

    def worker(w: int) -> None:
        for k in range(w, total, threads):
            wait = t0 + k / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            s = time.perf_counter()
            op(base + k)
            lat.append(time.perf_counter() - s)

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return lat


def max_rate(op: Callable[[int], object], seconds: float, base: int, threads: int = 32) -> float:
    done = [0]
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker(w: int) -> None:
        k = w
        while time.perf_counter() < stop:
            op(base + k)
            k += threads
            with lock:
                done[0] += 1

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return done[0] / (time.perf_counter() - t0)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000
