"""Path intelligence on recorded traces and the emulated WAN: forecasts, settling, anomaly detection.

    sudo python perf/bench_predict.py [--quick] [--parts backtest,settle,detect] [--out FILE]

Three parts, each against its naive peer in the same run:

* ``backtest`` (no root needed): every trace in perf/traces/ (recorded by perf/sla.py and by this
  script's ``settle`` part) -- each series of its sends (goodput, goodput per stream, RTT,
  retransmitted fraction, final stream count) and its 0.5 s samples (goodput, RTT) -- forecast
  one step ahead, rolling, by every model of dwcp.transport.predict; MAE and MAPE per model, and
  as a ratio to the last-value model's.  Plus the anomaly detectors' false alarms replaying every
  recorded sample (dwcp.transport.anomaly.replay), per hour of samples.
* ``settle`` (root: the testbed): on two emulated cells, ``--streams auto`` sends *without* a
  forecast (a fresh state directory: no trace of the path) and *with* one (the state directory
  of ``warm`` earlier sends), alternating, ``runs`` of each; settling time two ways (the stream
  count: from the decision after the last that left +-1 of the final count, as perf/sla.py; the
  goodput: until it first held 90% of the rest's median, dwcp.transport.trace.settle_time) and
  goodput; medians and the ratio with / without.  Target: settles >= 30% faster, goodput not lower.
* ``detect`` (root): a rate drop, a loss spike and an RTT step (dwcp._testbase.pathevents.EVENTS)
  each injected mid-send, ``runs`` times; the delay from the change to the first anomaly the
  send raised on the matching signal (target: <= 5 s), and the anomalies of clean sends.

* ``record`` (root, not in the default parts): ``--minutes`` of back-to-back clean ``--streams auto``
  sends, cycling over the two cells, each cell's trace written to perf/traces/long-*.json: the
  recorded samples "at most one false alarm per hour" is measured on.

Writes perf/results/bench_predict.json and, with matplotlib, bench_predict.png.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from _common import exit_cleanly_on_sigterm, machine, write_json  # noqa: E402

from dwcp.transport.anomaly import replay  # noqa: E402
from dwcp.transport.predict import MODELS, backtest  # noqa: E402

TRACES = os.path.join(HERE, "traces")
SEND_SERIES = ("goodput", "stream_bytes_per_s", "rtt_s", "retrans_fraction", "streams")
SIGNAL_OF = {"rate_drop": "goodput", "loss_spike": "retrans", "rtt_step": "rtt"}
CELLS = [  # (rate Mbit/s, RTT ms, loss): a long fat path, and a slower lossy one
    (1000, 50, 0.001),
    (300, 25, 0.01),
]


def med(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def segments(rows: list[list], gap_s: float = 5.0) -> list[list[list]]:
    """Rows split where time jumps (a new send) or goes back."""
    out: list[list[list]] = []
    for r in rows:
        if not out or r[0] < out[-1][-1][0] or r[0] - out[-1][-1][0] > gap_s:
            out.append([])
        out[-1].append(r)
    return out


def score(series_list: list[list[float]]) -> dict:
    """Each model's MAE and MAPE pooled over ``series_list`` (each backtested on its own), and per model
    the ratio of its MAE to the last-value model's."""
    out = {}
    for m in MODELS:
        errs, pcts, n = 0.0, [], 0
        for s in series_list:
            if len(s) <= 3:
                continue
            mae, mape = backtest(s, m)
            k = len(s) - 3
            errs += mae * k
            n += k
            if math.isfinite(mape):
                pcts.append((mape, k))
        if n:
            out[m] = {"mae": errs / n, "n": n,
                      "mape": sum(p * k for p, k in pcts) / sum(k for _, k in pcts) if pcts else None}  # fmt: skip
    naive = out.get("last", {}).get("mae")
    for r in out.values():
        r["vs_last_value"] = r["mae"] / naive if naive else None
    if out:
        best = min(out, key=lambda m: out[m]["mae"])
        out["best"] = {"model": best, "vs_last_value": out[best]["vs_last_value"]}
    return out


def part_backtest(traces: list[str]) -> dict:
    res: dict = {"traces": {}, "false_alarms": {}}
    total_s, alarms = 0.0, []
    for path in traces:
        with open(path) as f:
            t = json.load(f)
        name = os.path.basename(path)
        sends = t.get("sends") or []
        # the sends' series are short (one value per send): backtest each trace's whole history
        per = {k: score([[float(s[k]) for s in sends]]) for k in SEND_SERIES}
        segs = [s for s in segments(t.get("samples") or []) if len(s) > 8]
        per["sample_goodput"] = score([[float(r[1]) for r in s] for s in segs])
        per["sample_rtt_s"] = score([[float(r[2]) for r in s if r[2] is not None] for s in segs])
        res["traces"][name] = {"sends": len(sends), "samples": sum(len(s) for s in segs), "made": t.get("made"),
                               "series": per}  # fmt: skip
        if (t.get("made") or {}).get("clean", True):
            got = replay(t.get("samples") or [])
            secs = sum(s[-1][0] - s[0][0] + 0.5 for s in segs)
            total_s += secs
            alarms += [{"trace": name, **a.to_json()} for a in got]
            res["false_alarms"][name] = {"alarms": len(got), "hours": secs / 3600}
    res["false_alarms_total"] = {"alarms": len(alarms), "hours": total_s / 3600,
                                 "per_hour": len(alarms) / (total_s / 3600) if total_s else None,
                                 "target_per_hour": 1.0, "which": alarms[:20]}  # fmt: skip
    return res


def part_settle(
    tb, rx, src: str, root: str, cells: list, runs: int, warm: int, traces_dir: str | None
) -> dict:
    from dwcp._testbase.pathevents import send
    from dwcp._testbase.wan import Link

    out = []
    for rate, rtt, loss in cells:
        tb.set_link(Link(rate_bit_s=rate * 1e6, rtt_ms=rtt, loss=loss))
        state = os.path.join(root, f"state-{rate}-{rtt}-{loss}")
        shutil.rmtree(state, ignore_errors=True)
        history = []  # the path's trace
        for i in range(warm):
            history.append(send(tb, rx, src, f"bp/warm-{i}", state))
            _keep_traces_only(state)
        rows: dict[str, list[dict]] = {"without": [], "with": []}
        for i in range(runs):
            for kind in ("without", "with"):
                st = state if kind == "with" else os.path.join(root, f"cold-{i}")
                r = send(tb, rx, src, f"bp/{kind}-{i}", st)
                _keep_traces_only(st)
                if kind == "without":
                    shutil.rmtree(st, ignore_errors=True)
                rows[kind].append(_settle_row(r))
        cell = {"rate_mbit": rate, "rtt_ms": rtt, "loss": loss, "warm_sends": len(history),
                "warm_errors": [h.error for h in history if h.error]}  # fmt: skip
        for kind, rs in rows.items():
            cell[kind] = {
                k: med(r.get(k) for r in rs)
                for k in (
                    "settle_streams_s",
                    "settle_goodput_s",
                    "bytes_per_s",
                    "streams_initial",
                    "streams_final",
                )
            }
            cell[kind]["runs"] = rs
        w, wo = cell["with"], cell["without"]
        cell["ratio_with_vs_without"] = {
            k: (w[k] / wo[k]) if w.get(k) is not None and wo.get(k) else None
            for k in ("settle_streams_s", "settle_goodput_s", "bytes_per_s")
        }
        if traces_dir:  # the cell's trace (every send with a forecast) joins the recorded ones
            _save_trace(state, traces_dir, rate, rtt, loss)
        out.append(cell)
        shutil.rmtree(state, ignore_errors=True)
        print(f"settle {rate} Mbit/s {rtt} ms {loss:g}: with/without {cell['ratio_with_vs_without']}",
              file=sys.stderr, flush=True)  # fmt: skip
    return {"cells": out}


def _settle_row(r) -> dict:
    if r.report is None:
        return {"error": r.error}
    o = r.report
    dec = o["streams"]["decisions"]
    final = dec[-1]["streams"]
    bad = [i for i, x in enumerate(dec) if abs(x["streams"] - final) > 1]
    p = o.get("path") or {}
    return {"bytes_per_s": o["throughput_bytes_per_s"], "seconds": o["seconds"],
            "settle_streams_s": dec[bad[-1] + 1]["t"] if bad else 0.0, "settle_goodput_s": p.get("settle_s"),
            "streams_initial": o["streams"]["initial"], "streams_final": o["streams"]["final"],
            "initial_reason": dec[0]["reason"], "chunk_size": o["chunk_size"], "used": p.get("used"),
            "anomalies": len(p.get("anomalies") or [])}  # fmt: skip


def _save_trace(state: str, traces_dir: str, rate, rtt, loss, *, name: str = "", by: str = "",
                sends: str = "") -> None:  # fmt: skip
    tdir = os.path.join(state, "traces")
    for fn in os.listdir(tdir) if os.path.isdir(tdir) else ():
        with open(os.path.join(tdir, fn)) as f:
            t = json.load(f)
        t["peer"], t["nic"] = "testbed-b", "tun (emulated WAN)"
        t["made"] = {"by": by or "perf/bench_predict.py --parts settle",
                     "date": time.strftime("%Y-%m-%d", time.gmtime()),
                     "link": {"rate_mbit": rate, "rtt_ms": rtt, "loss": loss},
                     "sends": sends or "warm-up sends, then every send with a forecast (auto streams)",
                     "clean": True}  # fmt: skip
        os.makedirs(traces_dir, exist_ok=True)
        out = name or f"predict-{rate:g}mbit-{rtt:g}ms-{loss * 100:g}pct.json"
        with open(os.path.join(traces_dir, out), "w") as f:
            json.dump(t, f, separators=(",", ":"))
            f.write("\n")


def part_detect(tb, rx, src: str, root: str, runs: int, at_s: float) -> dict:
    from dwcp._testbase.pathevents import send
    from dwcp._testbase.wan import Link

    base = Link(rate_bit_s=500e6, rtt_ms=20, loss=0.0)
    tb.set_link(base)
    res: dict = {"link": {"rate_mbit": 500, "rtt_ms": 20, "loss": 0.0}, "inject_at_s": at_s, "events": {}}
    for event, signal in SIGNAL_OF.items():
        rs = []
        for i in range(runs):
            state = os.path.join(root, f"detect-{event}-{i}")
            r = send(tb, rx, src, f"bp/{event}-{i}", state, event=event, at_s=at_s)
            shutil.rmtree(state, ignore_errors=True)
            rs.append({"delay_s": r.delay_s(signal), "error": r.error,
                       "other_anomalies": [a["signal"] for a in r.anomalies() if a["signal"] != signal]})  # fmt: skip
        delays = [x["delay_s"] for x in rs]
        res["events"][event] = {"signal": signal, "detected": sum(d is not None for d in delays), "runs": rs,
                                "median_delay_s": med(delays), "max_delay_s": max((d for d in delays if d is not None),
                                                                                 default=None)}  # fmt: skip
        print(f"detect {event}: delays {delays}", file=sys.stderr, flush=True)
    clean = []
    for i in range(runs):
        state = os.path.join(root, f"detect-clean-{i}")
        r = send(tb, rx, src, f"bp/clean-{i}", state)
        shutil.rmtree(state, ignore_errors=True)
        clean.append({"anomalies": [a["signal"] for a in r.anomalies()], "seconds": (r.report or {}).get("seconds"),
                      "error": r.error})  # fmt: skip
    res["clean"] = clean
    return res


def _keep_traces_only(state: str) -> None:
    """Remove what a send kept in its state dir (its baselines) but the path traces."""
    for name in os.listdir(state) if os.path.isdir(state) else ():
        if name != "traces":
            p = os.path.join(state, name)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)


def part_record(tb, rx, src: str, root: str, minutes: float, traces_dir: str, tag: str = "") -> dict:
    from dwcp._testbase.pathevents import send
    from dwcp._testbase.wan import Link

    states = {c: os.path.join(root, "rec-{}-{}-{}".format(*c)) for c in CELLS}
    deadline, n, errors = time.monotonic() + minutes * 60, 0, []
    while time.monotonic() < deadline:
        for c in CELLS:
            tb.set_link(Link(rate_bit_s=c[0] * 1e6, rtt_ms=c[1], loss=c[2]))
            r = send(tb, rx, src, f"bp/rec-{n}", states[c])
            _keep_traces_only(states[c])  # a kept baseline per send would fill tmpfs within the hour
            n += 1
            if r.error:
                errors.append(r.error)
                if len(errors) >= 3:  # the receiver is gone: stop, and say so
                    raise RuntimeError(f"record: {len(errors)} sends failed: {errors[-1]}")
    out = {}
    for (rate, rtt, loss), st in states.items():
        # (a trace keeps 2048 samples, 17 minutes: a longer recording is several runs with their own tag)
        name = f"long-{tag + '-' if tag else ''}{rate:g}mbit-{rtt:g}ms-{loss * 100:g}pct.json"
        _save_trace(st, traces_dir, rate, rtt, loss, name=name,
                    by=f"perf/bench_predict.py --parts record --minutes {minutes:g}",
                    sends="back-to-back clean --streams auto sends, the two cells in turn")  # fmt: skip
        out[name] = os.path.exists(os.path.join(traces_dir, name))
    return {"sends": n, "errors": errors[:5], "written": out}


def plot(res: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    bt = res.get("backtest", {}).get("traces", {})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    labels, vals = [], {m: [] for m in MODELS}
    for name, t in sorted(bt.items()):
        for series in ("goodput", "rtt_s", "sample_goodput", "sample_rtt_s"):
            sc = t["series"].get(series) or {}
            if "last" not in sc:
                continue
            labels.append(f"{name.removesuffix('.json')[:22]}\n{series}")
            for m in MODELS:
                vals[m].append((sc.get(m) or {}).get("vs_last_value") or np.nan)
    x = np.arange(len(labels))
    for k, m in enumerate(MODELS):
        ax.bar(x + (k - 2) * 0.16, vals[m], 0.16, label=m)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")  # a series the last value predicts almost exactly makes the others' ratios huge
    ax.set_xticks(x, labels, rotation=90, fontsize=6)
    ax.set_ylabel("backtest MAE / last-value MAE")
    ax.set_title("forecast error by model (lower is better)")
    ax.legend(fontsize=7)
    ax = axes[1]
    cells = res.get("settle", {}).get("cells", [])
    for k, c in enumerate(cells):
        for j, kind in enumerate(("without", "with")):
            v = [r.get("settle_streams_s") for r in c[kind]["runs"] if r.get("settle_streams_s") is not None]
            ax.scatter([k * 3 + j] * len(v), v, label=f"{kind} forecast" if k == 0 else None,
                       color="C1" if kind == "without" else "C0")  # fmt: skip
    ax.set_xticks([k * 3 + 0.5 for k in range(len(cells))],
                  [f"{c['rate_mbit']} Mbit/s {c['rtt_ms']} ms {c['loss'] * 100:g}%" for c in cells])  # fmt: skip
    ax.set_ylabel("settling time of the stream count (s)")
    ax.set_title("--streams auto with and without the path's forecast")
    if cells:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="backtest,settle,detect")
    ap.add_argument("--quick", action="store_true", help="fewer runs (2) and smaller objects")
    ap.add_argument("--runs", type=int, default=0, help="runs per method and cell (default 3, --quick 2)")
    ap.add_argument("--traces", default=TRACES, help="recorded traces to backtest, and where settle's go")
    ap.add_argument("--no-record", action="store_true", help="do not write the settle part's traces")
    ap.add_argument("--minutes", type=float, default=30.0, help="the record part's length (at most 34)")
    ap.add_argument("--tag", default="", help="the record part's files: long-TAG-<cell>.json")
    ap.add_argument("--out")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    runs = args.runs or (2 if args.quick else 3)
    res: dict = {"machine": machine(), "parts": sorted(parts), "runs": runs}
    if parts & {"settle", "detect", "record"}:
        from dwcp._testbase.pathevents import Receiver
        from dwcp._testbase.wan import Link, Testbed

        why = Testbed.unavailable()
        if why:
            print(f"bench_predict.py: {why}", file=sys.stderr)
            return 2
        root = tempfile.mkdtemp(prefix="dwcp-bp-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            mib = 512 if args.quick else 1024
            src = os.path.join(root, "object")
            np.random.default_rng(12).integers(0, 256, mib << 20, dtype=np.uint8).tofile(src)
            # detect: long enough at 500 Mbit/s (~26 s) that an event at 12 s has 5 s of transfer after it
            big = os.path.join(root, "big")
            with open(big, "wb") as f:
                for _ in range(3 if "detect" in parts else 0):
                    f.write(np.random.default_rng(13).integers(0, 256, 512 << 20, dtype=np.uint8).tobytes())
            with Testbed(Link()) as tb, Receiver(tb, root) as rx:
                if "settle" in parts:
                    res["settle"] = part_settle(tb, rx, src, root, CELLS, runs, 3,
                                                None if args.no_record else args.traces)  # fmt: skip
                if "detect" in parts:
                    res["detect"] = part_detect(tb, rx, big, root, runs, at_s=12.0)
                if "record" in parts:
                    res["record"] = part_record(tb, rx, src, root, args.minutes, args.traces, args.tag)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if "backtest" in parts:
        res["backtest"] = part_backtest(sorted(glob.glob(os.path.join(args.traces, "*.json"))))
    path = write_json(res, args.out, "bench_predict.json")
    plot(res, os.path.splitext(path)[0] + ".png")
    return 0


if __name__ == "__main__":
    exit_cleanly_on_sigterm()
    raise SystemExit(main())
