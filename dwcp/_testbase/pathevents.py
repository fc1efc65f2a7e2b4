"""Sends over the emulated WAN with a path event injected mid-transfer: for the anomaly detectors' tests
and perf/bench_predict.py.

A ``Receiver`` is a `dwcp daemon` in host b of a ``Testbed`` (dwcp._testbase.wan) storing on tmpfs;
``send`` runs `dwcp send --json` in host a and, ``at_s`` seconds after it starts,
changes the link by ``event`` (``EVENTS``: a rate drop, a loss spike, an RTT step), and returns the
send's report with the wall-clock time of the change.  Every process is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .wan import Link, Testbed

__all__ = ["Receiver", "EVENTS", "SendResult", "send", "PORT"]

PORT = 7711

# each event's change of the running link (what a real path does when a flow joins at the
# bottleneck, a radio fades or a route moves)
EVENTS: dict[str, Callable[[Link], Link]] = {
    "rate_drop": lambda lk: replace(lk, rate_bit_s=lk.rate_bit_s * 0.4),  # 60% of the capacity gone
    "loss_spike": lambda lk: replace(lk, loss=0.03),  # 3% of packets dropped
    "rtt_step": lambda lk: replace(lk, rtt_ms=lk.rtt_ms + 50.0),  # a route 50 ms longer
}


class Receiver:
    """`dwcp daemon` in host b of ``tb``, storing under ``root`` (a tmpfs directory is best)."""

    def __init__(self, tb: Testbed, root: str, *, port: int = PORT) -> None:
        self.tb, self.root, self.port = tb, root, port
        self.data = os.path.join(root, "rx")
        cfg = os.path.join(root, "rx.toml")
        with open(cfg, "w") as f:
            f.write(f'[node]\nid = "rx"\n[listen]\nhost = "{tb.addr["b"]}"\ndata_port = {port}\n'
                    f'metrics_port = -1\n[security]\nplaintext = true\n[storage]\ndata_dir = "{self.data}"\n'
                    "[transport]\nidle_timeout_s = 60.0\n")  # fmt: skip
        self.proc = tb.popen("b", [sys.executable, "-m", "dwcp", "daemon", "--config", cfg], cwd=root,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(self.data, "control.sock")):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("dwcp daemon did not start in host b")
            time.sleep(0.1)

    @property
    def address(self) -> str:
        return f"{self.tb.addr['b']}:{self.port}"

    def clear(self) -> None:
        """Forget what was received (the next send of a key is full again)."""
        shutil.rmtree(os.path.join(self.data, "objects"), ignore_errors=True)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SendResult:
    report: dict | None  # `dwcp send --json`; None when the send failed
    error: str | None
    injected_at: float | None  # Unix time the event changed the link (None: no event)
    event: str | None

    def anomalies(self, signal: str | None = None) -> list[dict]:
        got = ((self.report or {}).get("path") or {}).get("anomalies") or []
        return [a for a in got if signal is None or a.get("signal") == signal]

    def delay_s(self, signal: str) -> float | None:
        """Seconds from the injection to the first anomaly on ``signal`` raised after it (None: none)."""
        if self.injected_at is None:
            return None
        after = [a["at"] - self.injected_at for a in self.anomalies(signal) if a["at"] >= self.injected_at]
        return min(after) if after else None


def send(tb: Testbed, rx: Receiver, src: str, key: str, state_dir: str, *, streams: str = "auto",
         event: str | None = None, at_s: float = 8.0, timeout_s: float = 300.0) -> SendResult:  # fmt: skip
    """`dwcp send SRC --key KEY` from host a to ``rx`` with ``state_dir`` as its state (path traces are
    kept there); ``event`` (a key of EVENTS) changes the link ``at_s`` seconds into the send and the
    link is restored after it."""
    before = tb.link
    argv = [sys.executable, "-m", "dwcp", "send", src, "--to", rx.address, "--key", key, "--plaintext", "--json",
            "--streams", streams, "--state-dir", state_dir]  # fmt: skip
    proc = tb.popen("a", argv, cwd=rx.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    box: list[float] = []
    stop = threading.Event()

    def inject() -> None:
        if not stop.wait(at_s):
            assert event is not None
            tb.set_link(EVENTS[event](before))
            box.append(time.time())

    th = threading.Thread(target=inject, daemon=True) if event else None
    if th is not None:
        th.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        stop.set()
        if th is not None:
            th.join()
        if box:
            tb.set_link(before)
        rx.clear()
    if proc.returncode != 0:
        return SendResult(None, (err or "").strip()[-800:], box[0] if box else None, event)
    return SendResult(json.loads(out), None, box[0] if box else None, event)
