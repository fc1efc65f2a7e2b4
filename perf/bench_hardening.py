"""What issue 13's hardening bought, measured against real `dwcp daemon` processes on loopback.

* hello_memory: a plaintext daemon's RSS at rest, then while 4 concurrent
  control connections each send one HELLO announcing a huge object in 4 KiB
  chunks (peak RSS over the next second, sampled every 20 ms; the connections
  stay open meanwhile): once announcing 512 GiB (more than the disk holds
  here: refused before anything is allocated), once a size that fits the disk
  (min(free / 2, 64 GiB) each; the .part is sparse), which the daemon accepts
  with a larger chunk size in WELCOME.  Reports each answer and the RSS growth
  per HELLO.  The old code's numbers (from the issue, not measured here) are
  in the JSON as "reported_before".
* starvation: a mutual-TLS daemon with listen.max_connections = 32; this
  process sends N small objects (1 stream each, sequentially, each bounded by
  a 30 s deadline) (a) with no attack, (b) while an attacker keeps 32 idle TCP
  connections open from 127.0.0.2 and reconnects as soon as one is dropped,
  (c) the same attack from 127.0.0.1, the legitimate client's own address.
  Per case: success fraction, median and p90 seconds per send (of the sends
  that succeeded), attacker connections made (its 0.5 s head start
  included), the daemon's admission counters over the sends (refused,
  evicted, handshake timeouts) and CPU seconds.  The attacker runs in a child process (its 32 threads
  in this one would take the GIL from the sender and charge the daemon with
  the benchmark's own contention).

A fresh daemon (and data directory) serves each case of each run.  --quick: 1
run of each; default 3, medians reported.  Writes perf/results/bench_hardening.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import psutil  # noqa: E402
from _common import exit_cleanly_on_sigterm, machine, write_json  # noqa: E402

from dwcp.cli.demo import same_dwcp_env  # noqa: E402
from dwcp.config import SecurityConfig, TransportConfig  # noqa: E402
from dwcp.transport.framesock import FrameSocket  # noqa: E402
from dwcp.transport.sender import Sender  # noqa: E402
from dwcp.wire import consts as C  # noqa: E402
from dwcp.wire.messages import encode_control  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
FRAME_NAMES = {C.FRAME_WELCOME: "WELCOME", C.FRAME_ERROR: "ERROR"}
REPORTED_BEFORE = {  # issue 13, the code before the hardening: NOT measured by this script
    "source": "issue 13 (reported for the old code, not measured here)",
    "rss_at_rest_mib": 40,
    "rss_after_1_hello_mib": 1024,
    "rss_after_4_hellos_mib": 4.2 * 1024,
    "hello": "512 GiB object in 4 KiB chunks",
}
SEND_DEADLINE_S = 30.0


# -- daemons ---------------------------------------------------------------
class Daemon:
    """A `dwcp daemon` process under ``root`` started like dwcp.cli.demo.start_daemon.

    Not start_daemon itself: its ``extra`` TOML goes after the [listen] table,
    which TOML cannot reopen, so listen.max_connections could not be set.
    Stopped by its own PID only: SIGTERM, then wait (SIGKILL after 20 s).
    """

    def __init__(self, root: str, node: str, certs: dict | None, listen_extra: str = "") -> None:
        from dwcp.daemon.control import request

        data_dir = os.path.join(root, node)
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        self.data_dir = data_dir
        sec = "plaintext = true" if certs is None else (
            f'ca_cert = "{certs["ca"]}"\ncert = "{certs["cert"]}"\nkey = "{certs["key"]}"')  # fmt: skip
        cfg = os.path.join(root, f"{node}.toml")
        with open(cfg, "w") as f:
            f.write(f'[node]\nid = "{node}"\n\n[listen]\nhost = "127.0.0.1"\ndata_port = 0\nmetrics_port = -1\n'
                    f'{listen_extra}\n[security]\n{sec}\n\n[storage]\ndata_dir = "{data_dir}"\n')  # fmt: skip
        self.log = os.path.join(root, f"{node}.log")
        with open(self.log, "wb") as log:
            # cwd=root: `python -m` puts the cwd first on sys.path (see start_daemon)
            self.proc = subprocess.Popen([sys.executable, "-m", "dwcp", "daemon", "--config", cfg], stdout=log,
                                         stderr=subprocess.STDOUT, env=same_dwcp_env(), cwd=root)  # fmt: skip
        self.sock = os.path.join(data_dir, "control.sock")
        self._request = request
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon {node} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                st = request(self.sock, {"op": "status"}, timeout_s=5)
                self.port = int(st["data_port"].rsplit(":", 1)[1])
                break
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"daemon {node} did not come up within 30 s") from None
                time.sleep(0.1)
        self.ps = psutil.Process(self.proc.pid)

    def server_stats(self) -> dict:
        return self._request(self.sock, {"op": "status"}, timeout_s=10)["server"]

    def log_tail(self, n: int = 2000) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- 1. HELLO memory -------------------------------------------------------
class RssSampler(threading.Thread):
    """Samples a process's RSS every ``interval`` s until stopped; ``peak`` is the largest seen."""

    def __init__(self, ps: psutil.Process, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.ps, self.interval, self.peak, self.samples = ps, interval, 0, 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.peak = max(self.peak, self.ps.memory_info().rss)
            self.samples += 1
            self.halt.wait(self.interval)


def rss_at_rest(ps: psutil.Process) -> int:
    xs = []
    for _ in range(5):
        xs.append(ps.memory_info().rss)
        time.sleep(0.02)
    return int(statistics.median(xs))


def hello_case(d: Daemon, size: int, n: int, window_s: float = 1.0) -> dict:
    """``n`` concurrent control connections each announce ``size`` bytes in 4 KiB chunks."""
    rest = rss_at_rest(d.ps)
    go = threading.Barrier(n + 1)
    answers: list = [None] * n
    socks: list = [None] * n

    def one(i: int) -> None:
        frame = encode_control(C.FRAME_HELLO, 1000 + i, {"v": 1, "role": "control", "op": "send",
                                                         "key": f"bench/huge{i}", "size": size, "digest": "ab" * 16,
                                                         "chunk_size": 4096})  # fmt: skip
        try:
            s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            socks[i] = s
            go.wait(10)
            t0 = time.perf_counter()
            s.sendall(frame)
            got = FrameSocket(s, timeout_s=10).recv_control()
            dt = time.perf_counter() - t0
            if got is None:
                answers[i] = {"type": "EOF", "seconds": dt}
                return
            h, msg = got
            a = {"type": FRAME_NAMES.get(h.frame_type, str(h.frame_type)), "seconds": dt}
            if h.frame_type == C.FRAME_ERROR:
                a.update(code=msg["code"], message=msg["message"])
            else:
                a.update(mode=msg.get("mode"), chunk_size=msg.get("chunk_size"))
            answers[i] = a
        except Exception as exc:  # noqa: BLE001 -- recorded, the benchmark goes on
            answers[i] = {"type": "exception", "message": f"{type(exc).__name__}: {exc}"}

    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    sampler = RssSampler(d.ps)
    try:
        go.wait(10)
    except threading.BrokenBarrierError:  # a connect failed: its thread recorded why
        pass
    sampler.start()
    for t in ts:
        t.join(15)
    time.sleep(window_s)  # the window: from the HELLOs to one second after the last answer
    sampler.halt.set()
    sampler.join()
    after = d.ps.memory_info().rss
    for s in socks:
        if s is not None:
            s.close()
    growth = max(0, sampler.peak - rest)
    return {"size": size, "hellos": n, "answers": answers, "rss_rest_mib": rest / MiB,
            "rss_peak_mib": sampler.peak / MiB, "rss_end_of_window_mib": after / MiB,
            "rss_growth_mib": growth / MiB, "rss_growth_per_hello_mib": growth / MiB / n,
            "samples": sampler.samples}  # fmt: skip


def run_hello_memory(tmp: str, runs: int, n: int) -> dict:
    out: dict = {"huge": [], "fits": []}
    for r in range(runs):
        for case in ("huge", "fits"):
            root = tempfile.mkdtemp(prefix=f"hello-{case}-{r}-", dir=tmp)
            d = Daemon(root, "rx", None)
            try:
                if case == "huge":
                    size = 512 * GiB
                else:
                    free = shutil.disk_usage(d.data_dir).free
                    size = min(free // 2, 64 * GiB) // 4096 * 4096
                out[case].append(hello_case(d, size, n))
            finally:
                d.stop()
                shutil.rmtree(root, ignore_errors=True)
    summary = {}
    for case, rs in out.items():
        summary[case] = {
            "size": rs[0]["size"],
            "answers": dict(Counter(_answer_str(a) for r in rs for a in r["answers"])),
            "example_message": next(
                (a["message"] for r in rs for a in r["answers"] if a.get("message")), None
            ),
            "answer_s": statistics.median(a["seconds"] for r in rs for a in r["answers"] if "seconds" in a),
            "rss_rest_mib": statistics.median(r["rss_rest_mib"] for r in rs),
            "rss_peak_mib": statistics.median(r["rss_peak_mib"] for r in rs),
            "rss_growth_per_hello_mib": statistics.median(r["rss_growth_per_hello_mib"] for r in rs),
        }
        cs = {a.get("chunk_size") for r in rs for a in r["answers"] if a.get("chunk_size")}
        if cs:
            summary[case]["welcome_chunk_sizes"] = sorted(cs)
    return {"hellos_per_run": n, "runs": out, "summary": summary, "reported_before": REPORTED_BEFORE}


def _answer_str(a: dict) -> str:
    if a["type"] == "ERROR":
        return f"ERROR code {a['code']}"
    if a["type"] == "WELCOME":
        return f"WELCOME chunk_size {a['chunk_size']}"
    return a["type"]


# -- 2. connection starvation ------------------------------------------------
def _attacker(port: int, source: str, conns: int, stop, ready, made, errs) -> None:
    """Child process: ``conns`` threads each keep one idle TCP connection to ``port`` open from ``source``,
    reconnecting 1 ms after it is dropped, until ``stop`` is set.  ``made`` gets the connects that
    succeeded, ``errs`` the attempts that failed (refused, reset, no port)."""
    counts = [[0, 0] for _ in range(conns)]

    def hold(i: int) -> None:
        while not stop.is_set():
            s = socket.socket()
            # RST on close: a connect loop leaves no TIME_WAIT to run the source's ports out
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                s.bind((source, 0))
                s.settimeout(2)
                s.connect(("127.0.0.1", port))
                counts[i][0] += 1
                s.settimeout(0.1)
                while not stop.is_set():  # idle: send nothing, wait to be dropped
                    try:
                        if not s.recv(1):
                            break
                    except TimeoutError:
                        continue
            except OSError:
                counts[i][1] += 1
            finally:
                s.close()
            time.sleep(0.001)

    ts = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(conns)]
    for t in ts:
        t.start()
    time.sleep(0.5)  # let the first wave connect
    ready.set()
    stop.wait()
    for t in ts:
        t.join(5)
    made.value = sum(c[0] for c in counts)
    errs.value = sum(c[1] for c in counts)


def timed_send(sender: Sender, data: bytes, port: int, key: str) -> tuple[bool, float, str]:
    """(ok, seconds, error) of one send, given up after SEND_DEADLINE_S (the thread is left to its own
    timeouts, which end it soon after)."""
    box: dict = {}

    def go() -> None:
        try:
            sender.send(data, "127.0.0.1", port, key, streams=1)
            box["ok"] = True
        except Exception as exc:  # noqa: BLE001 -- a failed send is a data point
            box["err"] = f"{type(exc).__name__}: {exc}"

    t0 = time.perf_counter()
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(SEND_DEADLINE_S)
    dt = time.perf_counter() - t0
    if t.is_alive():
        return False, dt, f"not done in {SEND_DEADLINE_S:.0f} s"
    return bool(box.get("ok")), dt, box.get("err", "")


def starvation_case(tmp: str, pki: dict, attack_from: str | None, sends: int, size: int, conns: int,
                    max_connections: int) -> dict:  # fmt: skip
    root = tempfile.mkdtemp(prefix=f"starve-{attack_from or 'none'}-", dir=tmp)
    d = Daemon(root, "rx", pki["rx"], listen_extra=f"max_connections = {max_connections}\n")
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    made, errs = ctx.Value("q", 0), ctx.Value("q", 0)
    att = None
    try:
        if attack_from:
            att = ctx.Process(target=_attacker, args=(d.port, attack_from, conns, stop, ready, made, errs),
                              daemon=True)  # fmt: skip
            att.start()
            if not ready.wait(30):
                raise RuntimeError("the attacker process did not start")
        before = d.server_stats()
        cpu0 = (sum(d.ps.cpu_times()[:2]), sum(os.times()[:2]))
        # bounded so a send fails by itself soon after the 30 s deadline too
        tc = TransportConfig(connect_timeout_s=10.0, stall_timeout_s=10.0, adaptive_chunks=False,
                             max_stream_reconnects=4)  # fmt: skip
        tx = pki["tx"]
        sender = Sender(tc, SecurityConfig(ca_cert=tx["ca"], cert=tx["cert"], key=tx["key"]))
        results: list[dict] = []
        t0 = time.perf_counter()
        for i in range(sends):
            ok, dt, err = timed_send(sender, os.urandom(size), d.port, f"bench/small{i}")
            results.append({"ok": ok, "seconds": dt, **({"error": err} if err else {})})
        wall = time.perf_counter() - t0
        # CPU seconds over the sends: this host has few CPUs, and the attack's churn competes for them
        cpu = {"daemon": sum(d.ps.cpu_times()[:2]) - cpu0[0], "sender": sum(os.times()[:2]) - cpu0[1]}
        if att is not None:
            cpu["attacker_total"] = sum(psutil.Process(att.pid).cpu_times()[:2])
        stop.set()
        if att is not None:
            att.join(30)
        after = d.server_stats()
    finally:
        stop.set()
        if att is not None and att.is_alive():
            att.join(10)
            if att.is_alive() and att.pid is not None:
                os.kill(att.pid, signal.SIGKILL)
                att.join()
        tail = d.log_tail(4000)
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
    ok_s = [r["seconds"] for r in results if r["ok"]]
    counters = {
        k: after.get(k, 0) - before.get(k, 0)
        for k in after
        if isinstance(after.get(k), int) and any(w in k for w in ("refused", "evicted", "timeouts"))
    }
    return {
        "attack_from": attack_from, "sends": results, "wall_s": wall,
        "success_fraction": len(ok_s) / sends,
        "median_s": statistics.median(ok_s) if ok_s else None,
        "p90_s": sorted(ok_s)[min(len(ok_s) - 1, int(0.9 * len(ok_s)))] if ok_s else None,
        "cpu_s": cpu,
        "attacker_connects": made.value if attack_from else 0,
        "attacker_connect_errors": errs.value if attack_from else 0,
        "daemon_counters": {k: v for k, v in counters.items() if v},
        "errors": sorted({r["error"] for r in results if r.get("error")}),
        **({"daemon_log_tail": tail} if any(not r["ok"] for r in results) else {}),
    }  # fmt: skip


def run_starvation(tmp: str, runs: int, sends: int, size: int, conns: int, max_connections: int) -> dict:
    from dwcp.security.certs import init_ca, issue_node

    ca = os.path.join(tmp, "ca")
    init_ca(ca, cluster_name="bench-hardening")
    pki = {}
    for node in ("rx", "tx"):
        n = issue_node(ca, node, hosts=("127.0.0.1", "localhost"))
        pki[node] = {"ca": n.ca_cert, "cert": n.cert, "key": n.key}
    cases = {"no_attack": None, "attack_from_127.0.0.2": "127.0.0.2", "attack_from_127.0.0.1": "127.0.0.1"}
    out: dict = {name: [] for name in cases}
    for _ in range(runs):
        for name, src in cases.items():
            out[name].append(starvation_case(tmp, pki, src, sends, size, conns, max_connections))
    summary = {}
    for name, rs in out.items():
        meds = [r["median_s"] for r in rs if r["median_s"] is not None]
        p90s = [r["p90_s"] for r in rs if r["p90_s"] is not None]
        summary[name] = {
            "success_fraction": statistics.median(r["success_fraction"] for r in rs),
            "median_s": statistics.median(meds) if meds else None,
            "p90_s": statistics.median(p90s) if p90s else None,
            "attacker_connects": statistics.median(r["attacker_connects"] for r in rs),
            "daemon_cpu_s": statistics.median(r["cpu_s"]["daemon"] for r in rs),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
        }
    ratios = {}
    for name in cases:
        if name == "no_attack":
            continue
        # per run, against the no-attack case of the same run; then the median
        rs = [a["median_s"] / b["median_s"] for a, b in zip(out[name], out["no_attack"], strict=True)
              if a["median_s"] and b["median_s"]]  # fmt: skip
        ratios[f"{name}_success_fraction"] = summary[name]["success_fraction"]
        ratios[f"{name}_median_vs_no_attack"] = statistics.median(rs) if rs else None
    return {"runs": out, "summary": summary, "ratios": ratios}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run of each case")
    ap.add_argument("--runs", type=int, help="runs of each case (default 3, --quick 1)")
    ap.add_argument("--hellos", type=int, default=4,
                    help="concurrent HELLOs per memory case (more than listen.max_unauthenticated_per_source, 4, "
                         "from one address: the daemon evicts the silent ones, answered EOF)")  # fmt: skip
    ap.add_argument("--sends", type=int, default=20, help="legitimate sends per starvation case")
    ap.add_argument("--send-kib", type=int, default=256)
    ap.add_argument("--attack-conns", type=int, default=32)
    ap.add_argument("--max-connections", type=int, default=32, help="the TLS daemon's listen.max_connections")
    ap.add_argument("--only", choices=("hello_memory", "starvation"))
    ap.add_argument("--out")
    args = ap.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    res: dict = {"machine": machine(), "config": {"runs": runs, "hellos": args.hellos, "sends": args.sends,
                 "send_bytes": args.send_kib * 1024, "attack_conns": args.attack_conns,
                 "max_connections": args.max_connections, "send_deadline_s": SEND_DEADLINE_S}}  # fmt: skip
    tmp = tempfile.mkdtemp(prefix="dwcp-bench-hardening-")
    t0 = time.perf_counter()
    try:
        if args.only in (None, "hello_memory"):
            res["hello_memory"] = run_hello_memory(tmp, runs, args.hellos)
        if args.only in (None, "starvation"):
            res["starvation"] = run_starvation(tmp, runs, args.sends, args.send_kib * 1024, args.attack_conns,
                                               args.max_connections)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["seconds"] = time.perf_counter() - t0
    path = write_json(res, args.out, "bench_hardening.json")
    print_summary(res, path)
    return 0


def print_summary(res: dict, path: str) -> None:
    print(f"\n== bench_hardening ({res['config']['runs']} run(s), medians; {res['seconds']:.0f} s) -> {path}")
    hm = res.get("hello_memory")
    if hm:
        rb = hm["reported_before"]
        print(f"HELLO memory ({hm['hellos_per_run']} concurrent HELLOs, 4 KiB chunks proposed); issue 13 reported "
              f"for the old code (not measured): {rb['rss_at_rest_mib']} MiB -> ~{rb['rss_after_1_hello_mib']} MiB "
              f"after one, ~{rb['rss_after_4_hellos_mib'] / 1024:.1f} GiB after four")  # fmt: skip
        for case, s in hm["summary"].items():
            print(f"  {case:5} {s['size'] / GiB:7.1f} GiB: RSS {s['rss_rest_mib']:.1f} -> peak {s['rss_peak_mib']:.1f}"
                  f" MiB, {s['rss_growth_per_hello_mib']:.2f} MiB per HELLO; answered in {s['answer_s'] * 1000:.0f} ms; all runs: "
                  + ", ".join(f"{n} x {a}" for a, n in s["answers"].items()))  # fmt: skip
            if s["example_message"]:
                print(f"        e.g. {s['example_message'][:110]}")
    st = res.get("starvation")
    if st:
        c = res["config"]
        print(f"Starvation (TLS, max_connections {c['max_connections']}, {c['sends']} x {c['send_bytes'] // 1024} KiB "
              f"sends, attacker {c['attack_conns']} idle connections):")  # fmt: skip
        for name, s in st["summary"].items():
            med = f"{s['median_s'] * 1000:.1f}" if s["median_s"] is not None else "-"
            p90 = f"{s['p90_s'] * 1000:.1f}" if s["p90_s"] is not None else "-"
            print(f"  {name:22} success {s['success_fraction']:.0%}  median {med} ms  p90 {p90} ms  "
                  f"attacker connects {s['attacker_connects']:.0f}  daemon CPU {s['daemon_cpu_s']:.2f} s "
                  f"in {s['wall_s']:.2f} s")  # fmt: skip
        for k, v in st["ratios"].items():
            print(f"  {k}: {'-' if v is None else f'{v:.2f}'}")


if __name__ == "__main__":
    exit_cleanly_on_sigterm()
    raise SystemExit(main())
