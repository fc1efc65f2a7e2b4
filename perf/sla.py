"""Throughput SLAs on emulated WAN links (run as root).

    sudo python perf/sla.py [--quick] [--config perf/sla.toml] [--out FILE]

For every cell of the matrix in sla.toml (RTT x loss x rate cap), in one
testbed (dwcp/_testbase/wan.py: two namespaces, tbf, iptables statistic, a
user-space delay relay) and the same link setting, it runs:

* one plain Python TCP stream (sendall / recv_into),
* ``iperf3 -P N`` for each N (the best N is the physical peer),
* dwcp (a `dwcp daemon` in host b, `dwcp send` in host a) with each fixed
  stream count, and with ``--streams auto``.

It reports goodput as a fraction of the cap, the count auto chose, its
settling time (from when its count stayed within +-1 of where it ended:
periodic one-stream probes do not count; the median over runs), CPU seconds per GB
(sender + daemon) and p50/p99 chunk latency (send -> ACK); writes
perf/results/sla.json and, with matplotlib, sla.png; and exits 1 when an
SLA of sla.toml is missed (2 when the testbed cannot be built here).

Every cell's dwcp sends also leave their path trace (dwcp.transport.trace: one record per send,
a sample every 0.5 s) in ``--traces`` (default perf/traces/), one file per cell with how it was
made: the recorded traces the predictors and anomaly detectors are tested and benchmarked on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from _common import RESULTS, exit_cleanly_on_sigterm, machine, write_json  # noqa: E402

from dwcp._testbase.pathevents import Receiver  # noqa: E402
from dwcp._testbase.wan import Link, Testbed  # noqa: E402

PORT = 7700
RECORD: list[dict] = []  # the path traces of the current cell's sends (dwcp_send appends)
CONGESTION = (
    ""  # --congestion: every sender's TCP congestion control ("" = each tool's default; dwcp's is bbr)
)
PY_RX = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); buf = memoryview(bytearray(1 << 22)); n = 0; t0 = None
while True:
    k = c.recv_into(buf)
    if not k: break
    if t0 is None: t0 = time.perf_counter()
    n += k
print(n / (time.perf_counter() - t0), flush=True)
"""
PY_TX = """
import os, socket, sys
s = socket.socket(); cc = os.environ.get("DWCP_SLA_CC")
if cc: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
s.connect((sys.argv[1], int(sys.argv[2]))); buf = bytes(1 << 22); left = int(sys.argv[3])
while left > 0:
    s.sendall(buf[: min(left, len(buf))]); left -= len(buf)
s.close()
"""


def python_stream(tb: Testbed, size: int) -> float:
    rx = tb.popen(
        "b", [sys.executable, "-c", PY_RX, tb.addr["b"], str(PORT + 1)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert rx.stdout is not None
        rx.stdout.readline()
        tb.run("a", [sys.executable, "-c", PY_TX, tb.addr["b"], str(PORT + 1), str(size)], timeout=600,
               env={**os.environ, "DWCP_SLA_CC": CONGESTION})  # fmt: skip
        return float(rx.stdout.readline())
    finally:
        rx.kill()
        rx.wait()


IPERF3_CPU: dict[str, list[float]] = {}  # "-P N" -> CPU s/GB of client + server, per run


def iperf3(tb: Testbed, size: int, n: int) -> float | None:
    """Goodput in bytes/s; the CPU seconds per GB of client and server (iperf3's own accounting:
    ``cpu_utilization_percent`` of the test's duration, each side) go to IPERF3_CPU."""
    srv = tb.popen("b", ["iperf3", "-s", "-1", "-B", tb.addr["b"], "-p", str(PORT + 2)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.4)
        cc = ["-C", CONGESTION] if CONGESTION else []
        r = tb.run("a", ["iperf3", "-c", tb.addr["b"], "-p", str(PORT + 2), "-n", str(size), "-P", str(n), "-J", *cc],
                   check=False, timeout=600)  # fmt: skip
        j = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        end = j.get("end", {})
        rx = end.get("sum_received", {})
        cpu, secs = end.get("cpu_utilization_percent", {}), rx.get("seconds") or 0
        if secs and rx.get("bytes"):
            used = (cpu.get("host_total", 0) + cpu.get("remote_total", 0)) / 100 * secs
            IPERF3_CPU.setdefault(str(n), []).append(used / (rx["bytes"] / 1e9))
        return rx.get("bits_per_second", 0) / 8 or None
    finally:
        srv.kill()
        srv.wait()


class Daemon(Receiver):
    """`dwcp daemon` in host b, receiving on /dev/shm, and its CPU time."""

    def __init__(self, tb: Testbed, root: str) -> None:
        super().__init__(tb, root, port=PORT)
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system


def dwcp_send(
    tb: Testbed,
    d: Daemon,
    src: str,
    key: str,
    streams: str,
    extra: tuple[str, ...] = (),
    keep_paths: bool = False,
) -> dict:
    """One `dwcp send`; its state dir (baselines) is removed after, except the path traces with ``keep_paths``.
    The send's path trace goes to RECORD either way."""
    state = os.path.join(d.root, "sender-state")
    c0 = d.cpu()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ident = ["--plaintext"]
    if CONGESTION:  # a sender config: the transport settings come from it
        cfg = os.path.join(d.root, "a.toml")
        with open(cfg, "w") as f:
            f.write(f'[node]\nid = "a"\n[security]\nplaintext = true\n[storage]\ndata_dir = "{os.path.join(d.root, "a")}"\n'
                    f'[transport]\ncongestion = "{CONGESTION}"\n')  # fmt: skip
        ident = ["--config", cfg]
    r = tb.run("a", [sys.executable, "-m", "dwcp", "send", src, "--to", f"{tb.addr['b']}:{PORT}", "--key", key,
                     *ident, "--json", "--streams", streams, "--state-dir", state, *extra],
               cwd=d.root, check=False, timeout=900)  # fmt: skip
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = d.cpu() - c0 + (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    record_trace(os.path.join(state, "traces"))
    for name in os.listdir(state) if os.path.isdir(state) else ():
        if not (keep_paths and name == "traces"):
            p = os.path.join(state, name)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)
    d.clear()
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-500:]}
    o = json.loads(r.stdout)
    dec = o["streams"]["decisions"]
    # settled: from the decision after the last one that left [final - 1, final + 1]
    final = dec[-1]["streams"]
    bad = [i for i, x in enumerate(dec) if abs(x["streams"] - final) > 1]
    settle = dec[bad[-1] + 1]["t"] if bad else 0.0
    return {
        "bytes_per_s": o["throughput_bytes_per_s"], "seconds": o["seconds"], "cpu_s_per_gb": cpu / (o["size"] / 1e9),
        "streams_final": o["streams"]["final"], "streams_max": o["streams"]["max"],
        "settle_s": settle, "decisions": dec, "samples": o["streams"].get("samples"),
        "chunk_latency_ms": o.get("chunk_latency_ms"), "chunk_size": o.get("chunk_size"),
        "chunk_size_reason": o.get("chunk_size_reason"), "retransmits": sum(s.get("total_retrans", 0) for s in o["tcp_info"]),
    }  # fmt: skip


def record_trace(tdir: str) -> None:
    """The newest send of every trace in ``tdir`` (and its samples) into RECORD."""
    for name in sorted(os.listdir(tdir)) if os.path.isdir(tdir) else ():
        with open(os.path.join(tdir, name)) as f:
            t = json.load(f)
        seen = RECORD[-1]["sends"][-1]["at"] if RECORD and RECORD[-1]["sends"] else 0.0
        new = [s for s in t["sends"] if s["at"] > seen]
        if not new:
            continue
        start = new[-1]["at"] - new[-1]["seconds"] - 1.0
        RECORD.append({"sends": new, "samples": [r for r in t["samples"] if r[0] >= start],
                       "anomalies": [a for a in t["anomalies"] if a.get("at", 0) >= start]})  # fmt: skip


def write_traces(tdir: str, cell: dict, quick: bool) -> str | None:
    """The cell's recorded sends as one trace file (dwcp.transport.trace's format, plus how it was made)."""
    if not RECORD:
        return None
    os.makedirs(tdir, exist_ok=True)
    name = f"sla-{cell['rate_mbit']:g}mbit-{cell['rtt_ms']:g}ms-{cell['loss'] * 100:g}pct.json"
    try:
        rev = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        rev = ""
    doc = {"version": 1, "peer": f"testbed-b:{PORT}", "nic": "tun (emulated WAN)",
           "made": {"by": f"perf/sla.py{' --quick' if quick else ''}", "git": rev,
                    "date": time.strftime("%Y-%m-%d", time.gmtime()),
                    "link": {k: cell[k] for k in ("rate_mbit", "rtt_ms", "loss")},
                    "sends": "the cell's every dwcp send in order: fixed stream counts, then cold and warm auto",
                    "clean": True},
           "sends": [s for r in RECORD for s in r["sends"]],
           "samples": [row for r in RECORD for row in r["samples"]],
           "anomalies": [a for r in RECORD for a in r["anomalies"]]}  # fmt: skip
    path = os.path.join(tdir, name)
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    return path


def run_cell(
    tb: Testbed, d: Daemon, src: str, size: int, m: dict, cap: float, chunk_sweep: list[str]
) -> dict:
    runs = m["runs"]

    def med(xs):
        xs = [x for x in xs if x]
        return statistics.median(xs) if xs else None

    cell: dict = {"python_1_stream": med(python_stream(tb, size) for _ in range(runs))}
    IPERF3_CPU.clear()
    cell["iperf3"] = {str(n): med(iperf3(tb, size, n) for _ in range(runs)) for n in m["iperf3_streams"]}
    cell["iperf3_cpu_s_per_gb"] = {n: med(v) for n, v in IPERF3_CPU.items()}

    def summary(rs: list[dict]) -> dict:
        """The run with the median goodput, the medians of goodput, final count and settling, every run's."""
        ok = sorted((r for r in rs if r.get("bytes_per_s")), key=lambda r: r["bytes_per_s"])
        mid = ok[len(ok) // 2] if ok else rs[0]
        return mid | {"bytes_per_s": med(r.get("bytes_per_s") for r in rs),
                      "streams_final": med(r.get("streams_final") for r in ok),
                      "settle_s": med(r.get("settle_s") for r in ok) if ok else None,
                      "runs": [{k: r.get(k) for k in ("bytes_per_s", "streams_final", "settle_s", "error")}
                               for r in rs]}  # fmt: skip

    cell["dwcp_fixed"] = {}
    for n in m["fixed_streams"]:
        cell["dwcp_fixed"][str(n)] = summary(
            [dwcp_send(tb, d, src, f"sla/f{n}-{i}", str(n)) for i in range(runs)]
        )
    # auto, cold: no earlier send to this peer (the SLA); then warm: a second send that starts from
    # what the first measured of the path (chunk size, stream count; its forecast, dwcp.transport.trace)
    rs, warm = [], []
    for i in range(runs):
        rs.append(dwcp_send(tb, d, src, f"sla/auto-{i}", "auto", keep_paths=True))
        warm.append(dwcp_send(tb, d, src, f"sla/warm-{i}", "auto"))
    cell["dwcp_auto"] = summary(rs)
    cell["dwcp_auto_warm"] = summary(warm)
    if chunk_sweep:
        cell["chunk_sweep"] = {}
        for cs in chunk_sweep:
            cr = [dwcp_send(tb, d, src, f"sla/c{cs}-{i}", "auto", ("--chunk-size", cs)) for i in range(runs)]
            cell["chunk_sweep"][cs] = summary(cr)
    frac = {"python_1_stream": (cell["python_1_stream"] or 0) / cap,
            "iperf3_best": max((v or 0) for v in cell["iperf3"].values()) / cap,
            "dwcp_auto": (cell["dwcp_auto"]["bytes_per_s"] or 0) / cap,
            "dwcp_auto_warm": (cell["dwcp_auto_warm"]["bytes_per_s"] or 0) / cap}  # fmt: skip
    for cs, r in cell.get("chunk_sweep", {}).items():
        frac[f"auto_chunk_{cs}"] = (r["bytes_per_s"] or 0) / cap
    for n, r in cell["dwcp_fixed"].items():
        frac[f"dwcp_{n}"] = (r["bytes_per_s"] or 0) / cap
    cell["fraction_of_cap"] = frac
    cell.update(rank_fixed(cell["dwcp_fixed"], cap))
    cell["best_iperf3_streams"] = int(max(cell["iperf3"], key=lambda n: cell["iperf3"][n] or 0))
    # CPU per GB against the best iperf3's, in the same cell (both sides of each)
    peer_cpu = cell["iperf3_cpu_s_per_gb"].get(str(cell["best_iperf3_streams"]))
    if peer_cpu:
        cell["cpu_vs_iperf3_best"] = {"dwcp_auto": (cell["dwcp_auto"].get("cpu_s_per_gb") or 0) / peer_cpu} | {
            f"dwcp_{n}": (r.get("cpu_s_per_gb") or 0) / peer_cpu for n, r in cell["dwcp_fixed"].items()}  # fmt: skip
    return cell


def rank_fixed(fixed: dict[str, dict], cap: float) -> dict:
    """The best fixed count, the counts tied with it, the knee (the fewest tied) and each count's range.

    On a plateau the argmax is noise.  A count is tied with the best when this run cannot tell them
    apart: its median is within 2% of the best's, or its runs' range overlaps the best count's runs'.
    """
    best = max(fixed, key=lambda n: fixed[n]["bytes_per_s"] or 0)
    top = fixed[best]["bytes_per_s"] or 0

    def span(r: dict) -> tuple[float, float]:
        xs = [x["bytes_per_s"] for x in r["runs"] if x.get("bytes_per_s")] or [0.0]
        return min(xs), max(xs)

    slowest_best = span(fixed[best])[0]
    tied = sorted(int(n) for n, r in fixed.items()
                  if (r["bytes_per_s"] or 0) >= 0.98 * top or span(r)[1] >= slowest_best)  # fmt: skip
    return {"best_fixed_streams": int(best), "tied_fixed_streams": tied, "knee_fixed_streams": tied[0],
            "fixed_spread_of_cap": {n: [round(x / cap, 3) for x in span(r)] for n, r in fixed.items()}}  # fmt: skip


def check(cells: list[dict], slas: list[dict]) -> list[dict]:
    out = []
    for s in slas:
        for c in cells:
            if c["rtt_ms"] != s["rtt_ms"] or c["loss"] != s["loss"]:
                continue
            auto = c["dwcp_auto"]
            got = {"fraction_of_cap": c["fraction_of_cap"]["dwcp_auto"], "settle_s": auto.get("settle_s"),
                   "streams": auto.get("streams_final"), "best_fixed": c["best_fixed_streams"],
                   "knee_fixed": c["knee_fixed_streams"], "tied_fixed": c["tied_fixed_streams"],
                   "runs": auto.get("runs")}  # fmt: skip
            missed = []
            if got["fraction_of_cap"] < s["min_fraction_of_cap"]:
                missed.append(f"goodput {got['fraction_of_cap']:.2f} of the cap < {s['min_fraction_of_cap']}")
            if got["settle_s"] is None or got["settle_s"] > s["max_settle_s"]:
                missed.append(f"settled after {got['settle_s']} s > {s['max_settle_s']} s")
            tol = s["max_streams_from_best_fixed"]
            lo, hi = min(got["tied_fixed"]) - tol, max(got["tied_fixed"]) + tol
            if got["streams"] is None or not lo <= got["streams"] <= hi:
                missed.append(f"auto ended at {got['streams']} streams, outside [{lo}, {hi}] (best "
                              f"{got['best_fixed']} of the fixed counts, tied with it: {got['tied_fixed']})")  # fmt: skip
            got["warm_fraction_of_cap"] = c["fraction_of_cap"].get("dwcp_auto_warm")
            got["warm_streams"] = c.get("dwcp_auto_warm", {}).get("streams_final")
            out.append({"sla": s["name"], "rate_mbit": c["rate_mbit"], "measured": got, "missed": missed,
                        "single_stream_fraction": c["fraction_of_cap"]["python_1_stream"]})  # fmt: skip
    return out


def plot(res: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no PNG)", file=sys.stderr)
        return
    cells = res["cells"]
    names = list(cells[0]["fraction_of_cap"])
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(cells)), 4.5))
    w = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([j + i * w for j in range(len(cells))], [c["fraction_of_cap"][n] for c in cells], w, label=n)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(cells))])
    ax.set_xticklabels(
        [f"{c['rate_mbit']:g}M {c['rtt_ms']:g}ms {c['loss'] * 100:g}%" for c in cells], fontsize=8
    )
    ax.set_ylabel("goodput / rate cap")
    ax.axhline(0.85, ls=":", c="k")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(HERE, "sla.toml"))
    ap.add_argument(
        "--quick", action="store_true", help="the [quick] matrix: the SLA cells only, smaller objects"
    )
    ap.add_argument("--out")
    ap.add_argument(
        "--congestion",
        default="",
        help="TCP congestion control for every sender (e.g. cubic; default: each tool's own, bbr for dwcp)",
    )
    ap.add_argument(
        "--chunk-sweep",
        default="",
        metavar="SIZES",
        help="also run --streams auto at these fixed chunk sizes per cell (e.g. 1M,4M,16M)",
    )
    ap.add_argument(
        "--loss", default="", metavar="RATES", help="only these loss rates of the matrix (e.g. 0.001)"
    )
    ap.add_argument("--traces", default=os.path.join(HERE, "traces"),
                    help="write each cell's path trace here ('' = none); default perf/traces")  # fmt: skip
    args = ap.parse_args()
    global CONGESTION
    CONGESTION = args.congestion
    why = Testbed.unavailable()
    if why:
        print(f"sla.py: {why}", file=sys.stderr)
        return 2
    with open(args.config, "rb") as f:
        conf = tomllib.load(f)
    m = dict(conf["quick" if args.quick else "matrix"])
    if args.loss:
        m["loss"] = [float(x) for x in args.loss.split(",")]
    size = m["object_mib"] << 20
    root = tempfile.mkdtemp(prefix="dwcp-sla-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    res: dict = {
        "machine": machine(),
        "matrix": m,
        "congestion": CONGESTION or "default (dwcp: bbr)",
        "cells": [],
    }
    try:
        src = os.path.join(root, "object")
        np.random.default_rng(11).integers(0, 256, size, dtype=np.uint8).tofile(src)
        with Testbed(Link()) as tb:
            d = Daemon(tb, root)
            try:
                for rate in m["rate_mbit"]:
                    for rtt in m["rtt_ms"]:
                        for loss in m["loss"]:
                            tb.set_link(Link(rate_bit_s=rate * 1e6, rtt_ms=rtt, loss=loss))
                            t0 = time.monotonic()
                            RECORD.clear()
                            cell = {"rate_mbit": rate, "rtt_ms": rtt, "loss": loss}
                            cell |= run_cell(
                                tb,
                                d,
                                src,
                                size,
                                m,
                                rate * 1e6 / 8,
                                [c for c in args.chunk_sweep.split(",") if c],
                            )
                            cell["wall_s"] = time.monotonic() - t0
                            if args.traces:
                                cell["trace"] = write_traces(args.traces, cell, args.quick)
                            res["cells"].append(cell)
                            print(f"{rate:g} Mbit/s {rtt:g} ms {loss * 100:g}%: "
                                  + ", ".join(f"{k} {v:.2f}" for k, v in cell["fraction_of_cap"].items())
                                  + f"; auto -> {cell['dwcp_auto'].get('streams_final')} streams "
                                  f"(settled {cell['dwcp_auto'].get('settle_s')} s), best fixed "
                                  f"{cell['best_fixed_streams']}", file=sys.stderr, flush=True)  # fmt: skip
            finally:
                d.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["sla"] = check(res["cells"], conf.get("sla", []))
    path = write_json(res, args.out, "sla.json")
    plot(res, os.path.splitext(path)[0] + ".png")
    missed = [s for s in res["sla"] if s["missed"]]
    for s in res["sla"]:
        print(f"{'MISSED' if s['missed'] else 'met'}: {s['sla']} at {s['rate_mbit']:g} Mbit/s: {s['measured']}"
              + (f" -- {'; '.join(s['missed'])}" if s["missed"] else ""), file=sys.stderr)  # fmt: skip
    return 1 if missed else 0


if __name__ == "__main__":
    exit_cleanly_on_sigterm()
    os.makedirs(RESULTS, exist_ok=True)
    raise SystemExit(main())
