"""Loopback transfer benchmark: dwcp against the physical references, same run.

References: ``iperf3 -l 1M`` with 1 and N streams, and a plain Python socket
pair (sendall / recv_into, 4 MiB buffers) discard what they receive; the
storing references write it to a file under --data-root as a receiver must:
``iperf3 -s -F FILE`` and ``dd`` of the object (the storage ceiling, no
network).  dwcp runs as in production: the receiver is a ``dwcp daemon``
process, the sender this process (plaintext and mutual TLS):

* full send of an incompressible object (checksums on: xxh3-64 per chunk,
  xxh3-128 of the whole, fsync + rename at the receiver);
* full send of a VM-like image (60% zero, 30% text, 10% random pages):
  effective rate = raw bytes / seconds;
* the 5%-dirty next version as a delta, against ``rsync --no-whole-file``
  (local, its --stats bytes sent) and ``zstd --patch-from`` (compress | pipe |
  decompress).

Medians of --runs runs.  CPU seconds per GB count both processes (sender and
daemon), and are compared with the storing peer's (``iperf3 -F``: client and
server, from the kernel's accounting of the reaped processes).  Each dwcp
run is paired with an ``iperf3 -F`` run just before it, and a case's
``paired_*`` figures are the medians of the per-pair ratios (they follow
the shared machine's drift better than a ratio of two medians taken minutes
apart).  The engines (``[transport] engine``: uring, epoll, threads) run side
by side at the same stream count, on both sides.
Writes perf/results/bench_transfer.json and, with matplotlib, a PNG.

Note: this VM backs guest memory lazily; the first writes into never-touched
page cache run several times slower.  The script first writes and deletes a
file of several object sizes under --data-root (so every case, peers included,
writes into memory the guest has touched before), and a warm-up pass of each
dwcp case runs before the timed runs.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from _common import RESULTS, ensure_tool, machine, write_json  # noqa: E402

from dwcp._testbase.images import dirty_version, vm_image  # noqa: E402
from dwcp.cli.demo import start_daemon  # noqa: E402
from dwcp.config import SecurityConfig, TransportConfig  # noqa: E402
from dwcp.daemon.control import request  # noqa: E402
from dwcp.storage import ObjectStore  # noqa: E402
from dwcp.transport.sender import Sender  # noqa: E402
from dwcp.transport.session import TransferReport  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iperf3(size: int, streams: int, store_to: str | None = None) -> float | None:
    """iperf3 -l 1M goodput in bytes/s; with ``store_to`` the server writes what it receives there (-F)."""
    got = iperf3_cpu(size, streams, store_to)
    return None if got is None else got[0]


def iperf3_cpu(size: int, streams: int, store_to: str | None = None) -> tuple[float, float] | None:
    """(goodput bytes/s, CPU seconds of client and server together), as ``iperf3``."""
    exe = ensure_tool("iperf3")
    if not exe:
        return None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    port = _free_port()
    extra = ["-F", store_to] if store_to else []
    srv = subprocess.Popen([exe, "-s", "-1", "-p", str(port), *extra], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.3)
        out = subprocess.run([exe, "-c", "127.0.0.1", "-p", str(port), "-l", "1M", "-n", str(size), "-P",
                              str(streams), "-J"], capture_output=True, text=True, timeout=120)  # fmt: skip
        rate = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8
    finally:
        if store_to:  # -F: let it finish writing
            try:
                srv.wait(30)
            except subprocess.TimeoutExpired:
                pass
        srv.kill()
        srv.wait()
        if store_to:
            os.unlink(store_to)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # both processes are reaped: their CPU is in it
    return rate, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def dd_store(src: str, dst: str) -> float:
    """Storage ceiling: bytes/s of copying the object into a new file under the data root (no network)."""
    size = os.path.getsize(src)
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=4M", "conv=fsync"], check=True, capture_output=True)
    dt = time.perf_counter() - t0
    os.unlink(dst)
    return size / dt


def prefault(root: str, nbytes: int) -> None:
    """Write and delete ``nbytes`` under ``root`` so later writes land in memory the guest has touched."""
    path = os.path.join(root, "prefault")
    block = bytes(8 << 20)
    with open(path, "wb") as f:
        for _ in range(0, nbytes, len(block)):
            f.write(block)
    os.unlink(path)


def python_socket(size: int) -> float:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    buf = bytearray(4 << 20)
    done = threading.Event()

    def rx():
        c, _ = ls.accept()
        mv = memoryview(bytearray(4 << 20))
        n = 0
        while n < size:
            k = c.recv_into(mv)
            if not k:
                break
            n += k
        c.close()
        done.set()

    t = threading.Thread(target=rx)
    t.start()
    s = socket.create_connection(ls.getsockname())
    t0 = time.perf_counter()
    sent = 0
    while sent < size:
        s.sendall(buf)
        sent += len(buf)
    s.close()
    done.wait()
    dt = time.perf_counter() - t0
    t.join()
    ls.close()
    return size / dt


def delta_floor(v1: str, v2: str, out: str) -> dict:
    """What any delta of ``v2`` against ``v1`` costs on this host at the least, in seconds: read both
    versions to find what changed (a numpy compare, 64 MiB at a time: with a few bytes changed in 5%
    of the pages every MiB differs, so no hash can stand in for the bytes), make the new version from
    the kept old one (a kernel copy of ``v1`` into a new file) and hash the result once (xxh3-128).
    A tool that is N times faster than a peer needs the peer to take N times this."""
    import xxhash

    a, b = np.memmap(v1, dtype=np.uint8, mode="r"), np.memmap(v2, dtype=np.uint8, mode="r")
    step = 64 << 20
    t0 = time.perf_counter()
    changed = 0
    for i in range(0, len(a), step):
        changed += int(np.count_nonzero(a[i : i + step] != b[i : i + step]))
    t_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    shutil.copyfile(v1, out)
    t_copy = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(out, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        xxhash.xxh3_128_digest(m)
    t_hash = time.perf_counter() - t0
    os.unlink(out)
    del a, b
    return {"scan_s": t_scan, "copy_s": t_copy, "hash_s": t_hash, "seconds": t_scan + t_copy + t_hash,
            "bytes_changed": changed}  # fmt: skip


def _cpu(*procs: psutil.Process) -> float:
    t = os.times()
    return t.user + t.system + sum(sum(p.cpu_times()[:2]) for p in procs)


class Receiver:
    """A `dwcp daemon` process receiving under ``root`` (plaintext, or mutual TLS with ``certs``); ``env``
    overrides its environment (``DWCP_IMPL=ref``: the pure-Python engine, the native one's twin)."""

    def __init__(
        self, root: str, node: str, certs: dict | None, env: dict | None = None, engine: str = ""
    ) -> None:
        extra = f'\n[transport]\nengine = "{engine}"\n' if engine else ""
        self.proc, _cfg, sock, self.port = start_daemon(root, node, certs, extra=extra,
                                                         env=None if env is None else {**os.environ, **env})  # fmt: skip
        self.engine = request(sock, {"op": "status"}, timeout_s=5)["engine"]
        self.ps = psutil.Process(self.proc.pid)

    def peak_rss_bytes(self) -> int:
        """The daemon's peak resident set so far (VmHWM)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def dwcp_send(rx: Receiver, sender: Sender, data, key: str, streams) -> tuple[TransferReport, float]:
    """The send's report, and the receiver's CPU seconds during it."""
    c0 = _cpu(rx.ps)
    r = sender.send(data, "127.0.0.1", rx.port, key, streams=streams)
    return r, _cpu(rx.ps) - c0


SCALE_SENDER = """
import json, os, resource, sys, time
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.transport.sender import Sender
from dwcp.transport.source import FileSource
src = FileSource.open(sys.argv[1])
c, t = os.times(), time.perf_counter()
r = Sender(TransportConfig(), SecurityConfig(plaintext=True)).send(src, "127.0.0.1", int(sys.argv[2]), "bench/scale",
                                                                    streams=1)
c2 = os.times()
print(json.dumps({"seconds": time.perf_counter() - t, "bytes_per_s": r.throughput_bytes_per_s,
                  "cpu_s": c2.user + c2.system - c.user - c.system,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def scale(sizes_mib: list[int], runs: int, root: str | None) -> dict:
    """A file of each size sent by a `dwcp send`-like process (FileSource, 1 stream) to a daemon: seconds
    and CPU seconds per GB, and the peak RSS of sender and daemon, whose independence of the size is
    what a streaming data plane promises."""
    from dwcp.cli.demo import same_dwcp_env

    out = {}
    for mib in sizes_mib:
        size = mib << 20
        tmp = tempfile.mkdtemp(prefix="dwcp-scale-", dir=root)
        try:
            prefault(tmp, 2 * size)
            src = os.path.join(tmp, "src")
            rng = np.random.default_rng(mib)
            with open(src, "wb") as f:
                for _ in range(0, size, 64 << 20):
                    f.write(rng.integers(0, 256, min(64 << 20, size), dtype=np.uint8).tobytes())
                f.truncate(size)
            rows = []
            for i in range(runs + 1):  # +1: warm-up
                d = os.path.join(tmp, f"rx-{i}")
                rx = Receiver(d, "rx", None)
                try:
                    c0 = _cpu(rx.ps)
                    got = subprocess.run([sys.executable, "-c", SCALE_SENDER, src, str(rx.port)], capture_output=True,
                                         text=True, env=same_dwcp_env(), check=True, timeout=600)  # fmt: skip
                    rep = json.loads(got.stdout)  # the sender's CPU of the send alone (not its start-up)
                    rep["cpu_s_per_gb"] = (_cpu(rx.ps) - c0 + rep["cpu_s"]) / (size / 1e9)
                    rep["daemon_peak_rss_bytes"] = rx.peak_rss_bytes()
                finally:
                    rx.close()
                    shutil.rmtree(d, ignore_errors=True)
                if i:
                    rows.append(rep)
            out[f"{mib}MiB"] = {
                "seconds_per_gb": statistics.median(r["seconds"] / (size / 1e9) for r in rows),
                "cpu_s_per_gb": statistics.median(r["cpu_s_per_gb"] for r in rows),
                "sender_peak_rss_bytes": max(r["peak_rss_bytes"] for r in rows),
                "daemon_peak_rss_bytes": max(r["daemon_peak_rss_bytes"] for r in rows),
            }
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    spg = [v["seconds_per_gb"] for v in out.values()]
    out["seconds_per_gb_spread"] = max(spg) / min(spg) - 1  # the target: within 0.15
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB objects, 3 runs")
    ap.add_argument("--size-mib", type=int)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--streams", type=int, default=2, help="N for iperf3 -P N and dwcp's fixed count")
    ap.add_argument("--data-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where receivers keep objects (default /dev/shm: RAM, so the disk's fsync rate "
                         "does not hide the transfer engine; pass a disk path to include it)")  # fmt: skip
    ap.add_argument("--out")
    ap.add_argument("--scale", nargs="*", type=int, metavar="MIB",
                    help="only the scale run: a file of each size (default 256 1024 4096 MiB) sent from a file by "
                         "a separate process; s/GB and peak RSS of sender and daemon")  # fmt: skip
    args = ap.parse_args()
    if args.scale is not None:
        res = {"machine": machine(), "runs": args.runs or 3,
               "scale": scale(args.scale or [256, 1024, 4096], args.runs or 3, args.data_root)}  # fmt: skip
        print(json.dumps(res, indent=2))
        write_json(res, args.out, "bench_transfer_scale.json")
        return 0
    size = (args.size_mib or (256 if args.quick else 1024)) << 20
    runs = args.runs or 3
    tmp = tempfile.mkdtemp(prefix="dwcp-bench-", dir=args.data_root)
    res: dict = {"machine": machine(), "object_bytes": size, "runs": runs, "streams": args.streams,
                 "data_root": args.data_root or tempfile.gettempdir()}  # fmt: skip
    try:
        prefault(tmp, 4 * size)
        res["iperf3_1_stream_bytes_per_s"] = statistics.median(iperf3(size, 1) or 0 for _ in range(runs))
        res[f"iperf3_{args.streams}_streams_bytes_per_s"] = statistics.median(
            iperf3(size, args.streams) or 0 for _ in range(runs))  # fmt: skip
        res["python_socket_bytes_per_s"] = statistics.median(python_socket(size) for _ in range(runs))
        # storing references: what any receiver that keeps the bytes is bounded by here
        to_file = [iperf3_cpu(size, 1, os.path.join(tmp, "iperf3.out")) for _ in range(runs)]
        res["iperf3_1_stream_to_file_bytes_per_s"] = statistics.median(t[0] if t else 0 for t in to_file)
        # CPU of the storing peer, client and server: the yardstick of dwcp's CPU s/GB (both its processes)
        res["iperf3_1_stream_to_file_cpu_s_per_gb"] = statistics.median(
            t[1] / (size / 1e9) if t else float("nan") for t in to_file)  # fmt: skip

        rnd = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)
        src = os.path.join(tmp, "random.src")
        rnd.tofile(src)
        res["dd_store_bytes_per_s"] = statistics.median(
            dd_store(src, os.path.join(tmp, "dd.out")) for _ in range(runs)
        )
        os.unlink(src)
        img = vm_image(size, seed=2)
        img2 = dirty_version(img, fraction=0.05, seed=3)
        plain = SecurityConfig(plaintext=True)
        cases = {}
        from dwcp.security.certs import init_ca, issue_node

        init_ca(os.path.join(tmp, "ca"))
        rxc, tx = issue_node(os.path.join(tmp, "ca"), "rx"), issue_node(os.path.join(tmp, "ca"), "tx")
        rx_certs = {"ca": rxc.ca_cert, "cert": rxc.cert, "key": rxc.key}
        tls_tx = SecurityConfig(ca_cert=tx.ca_cert, cert=tx.cert, key=tx.key)
        tls_records_tx = SecurityConfig(ca_cert=tx.ca_cert, cert=tx.cert, key=tx.key, data_records="tls")
        ref_engine = {"DWCP_IMPL": "ref"}
        n = args.streams
        for name, certs, sec_tx, data, streams, env, engine in (
            ("random_plain_1", None, plain, rnd, 1, None, ""),
            # the engines side by side: the receiver's native engine above, its pure-Python twin here
            ("random_plain_1_python_engine", None, plain, rnd, 1, ref_engine, ""),
            (f"random_plain_{n}", None, plain, rnd, n, None, ""),
            # the receive engines ([transport] engine) side by side; the default (auto) is above
            (f"random_plain_{n}_engine_uring", None, plain, rnd, n, None, "uring"),
            (f"random_plain_{n}_engine_epoll", None, plain, rnd, n, None, "epoll"),
            (f"random_plain_{n}_engine_threads", None, plain, rnd, n, None, "threads"),
            ("random_tls_1", rx_certs, tls_tx, rnd, 1, None, ""),  # sealed records (the default)
            (
                "random_tls_1_tls_records",
                rx_certs,
                tls_records_tx,
                rnd,
                1,
                None,
                "",
            ),  # every byte in TLS records
            ("vm_image_plain_auto", None, plain, img, None, None, ""),
        ):
            out, paired = [], []
            for i in range(runs + 1):  # +1: warm-up
                # the storing peer right before each run: the ratio pair by pair follows the machine's drift
                peer = iperf3_cpu(size, 1, os.path.join(tmp, "iperf3.out"))
                d = os.path.join(tmp, f"{name}-{i}")
                rx = Receiver(d, "rx", certs, env, engine)
                engine_info = {k: rx.engine[k] for k in ("kind", "reason")} if rx.engine else None
                tc = TransportConfig(engine=engine or "auto")  # the sender runs the receiver's engine
                try:
                    r, cpu_s = dwcp_send(rx, Sender(tc, sec_tx), data, "bench/obj", streams)
                finally:
                    rx.close()
                    shutil.rmtree(d, ignore_errors=True)
                if i:
                    out.append((r, cpu_s))
                    if peer:
                        paired.append((r.throughput_bytes_per_s / peer[0], cpu_s / peer[1]))
            cases[name] = {
                # median of the per-pair ratios against `iperf3 -F` run just before each send
                "paired_rate_vs_iperf3_1_to_file": statistics.median(p[0] for p in paired)
                if paired
                else None,
                "paired_cpu_vs_iperf3_1_to_file": statistics.median(p[1] for p in paired) if paired else None,
                "bytes_per_s": statistics.median(r.throughput_bytes_per_s for r, _ in out),
                "wire_bytes": out[0][0].wire_bytes,
                "cpu_s_per_gb": statistics.median(c / (size / 1e9) for _, c in out),
                "streams_max": out[0][0].streams.max,
                "records": out[0][0].socket.get("records"),
                "engine": engine_info,
            }
        # delta: v1 then v2 with the sender's baseline
        out = []
        for i in range(runs + 1):
            d = os.path.join(tmp, f"delta-{i}")
            rx = Receiver(d, "rx", None)
            try:
                snd = Sender(TransportConfig(), plain, baselines=ObjectStore(os.path.join(tmp, f"sent-{i}")))
                snd.send(img, "127.0.0.1", rx.port, "bench/vm")
                r, cpu_s = dwcp_send(rx, snd, img2, "bench/vm", None)
                assert r.mode == "delta"
            finally:
                rx.close()
                shutil.rmtree(d, ignore_errors=True)
                shutil.rmtree(os.path.join(tmp, f"sent-{i}"), ignore_errors=True)
            if i:
                out.append((r, cpu_s))
        cases["delta_5pct"] = {"seconds": statistics.median(r.seconds for r, _ in out),
                               "wire_bytes": out[0][0].wire_bytes,
                               "cpu_s_per_gb": statistics.median(c / (size / 1e9) for _, c in out)}  # fmt: skip
        res["dwcp"] = cases

        v1, v2 = os.path.join(tmp, "v1"), os.path.join(tmp, "v2")
        img.tofile(v1)
        img2.tofile(v2)
        peers = {}
        rsync = ensure_tool("rsync")
        if rsync:
            ts, wire = [], 0
            for _ in range(runs):
                dst = os.path.join(tmp, "rsync-dst")
                shutil.copyfile(v1, dst)
                t0 = time.perf_counter()
                o = subprocess.run([rsync, "--no-whole-file", "--ignore-times", "--inplace", "--stats", v2, dst], capture_output=True,
                                   text=True, check=True)  # fmt: skip
                ts.append(time.perf_counter() - t0)
                m = re.search(r"Total bytes sent: ([\d,]+)", o.stdout)
                wire = int(m.group(1).replace(",", "")) if m else 0
            peers["rsync_no_whole_file"] = {"seconds": statistics.median(ts), "wire_bytes": wire}
        zstd = ensure_tool("zstd")
        if zstd:
            ts = []
            patch = os.path.join(tmp, "patch.zst")
            for _ in range(runs):
                t0 = time.perf_counter()
                subprocess.run(f"{zstd} -q -f -c --patch-from={v1} {v2} | tee {patch} | "
                               f"{zstd} -q -d -f --patch-from={v1} -o {os.path.join(tmp, 'v2.out')}",
                               shell=True, check=True)  # fmt: skip
                ts.append(time.perf_counter() - t0)
            peers["zstd_patch_from_pipe"] = {
                "seconds": statistics.median(ts),
                "wire_bytes": os.path.getsize(patch),
            }
        res["delta_peers"] = peers

        ip1 = res["iperf3_1_stream_bytes_per_s"] or float("nan")
        res["ratios"] = {
            "random_plain_1_vs_iperf3_1": cases["random_plain_1"]["bytes_per_s"] / ip1,
            "random_tls_1_vs_iperf3_1": cases["random_tls_1"]["bytes_per_s"] / ip1,
            "tls_cost_vs_plain_1": cases["random_tls_1"]["bytes_per_s"]
            / cases["random_plain_1"]["bytes_per_s"],
            "vm_image_effective_vs_iperf3_1": cases["vm_image_plain_auto"]["bytes_per_s"] / ip1,
            "python_socket_vs_iperf3_1": res["python_socket_bytes_per_s"] / ip1,
            "iperf3_1_to_file_vs_iperf3_1": res["iperf3_1_stream_to_file_bytes_per_s"] / ip1,
            "dd_store_vs_iperf3_1": res["dd_store_bytes_per_s"] / ip1,
            "random_plain_1_vs_iperf3_1_to_file": cases["random_plain_1"]["bytes_per_s"]
            / (res["iperf3_1_stream_to_file_bytes_per_s"] or float("nan")),
            "random_plain_1_vs_dd_store": cases["random_plain_1"]["bytes_per_s"]
            / res["dd_store_bytes_per_s"],
            # CPU seconds per GB, both sides, against the storing peer's (iperf3 -F client + server)
            "random_plain_1_cpu_vs_iperf3_1_to_file": cases["random_plain_1"]["cpu_s_per_gb"]
            / res["iperf3_1_stream_to_file_cpu_s_per_gb"],
            "random_tls_1_cpu_vs_iperf3_1_to_file": cases["random_tls_1"]["cpu_s_per_gb"]
            / res["iperf3_1_stream_to_file_cpu_s_per_gb"],
            "random_tls_1_vs_iperf3_1_to_file": cases["random_tls_1"]["bytes_per_s"]
            / (res["iperf3_1_stream_to_file_bytes_per_s"] or float("nan")),
            # the engines and the TLS paths side by side (same run)
            "random_plain_1_native_vs_python_engine": cases["random_plain_1"]["bytes_per_s"]
            / cases["random_plain_1_python_engine"]["bytes_per_s"],
            "random_plain_1_python_engine_vs_iperf3_1_to_file": cases["random_plain_1_python_engine"][
                "bytes_per_s"
            ]
            / (res["iperf3_1_stream_to_file_bytes_per_s"] or float("nan")),
            "random_plain_1_python_engine_cpu_vs_iperf3_1_to_file": cases["random_plain_1_python_engine"][
                "cpu_s_per_gb"
            ]
            / res["iperf3_1_stream_to_file_cpu_s_per_gb"],
            "random_tls_1_tls_records_vs_iperf3_1_to_file": cases["random_tls_1_tls_records"]["bytes_per_s"]
            / (res["iperf3_1_stream_to_file_bytes_per_s"] or float("nan")),
            "random_tls_1_tls_records_cpu_vs_iperf3_1_to_file": cases["random_tls_1_tls_records"][
                "cpu_s_per_gb"
            ]
            / res["iperf3_1_stream_to_file_cpu_s_per_gb"],
            "random_tls_1_sealed_vs_tls_records": cases["random_tls_1"]["bytes_per_s"]
            / cases["random_tls_1_tls_records"]["bytes_per_s"],
            "vm_image_effective_vs_iperf3_1_to_file": cases["vm_image_plain_auto"]["bytes_per_s"]
            / (res["iperf3_1_stream_to_file_bytes_per_s"] or float("nan")),
        }
        to_file = res["iperf3_1_stream_to_file_bytes_per_s"] or float("nan")
        for kind in ("uring", "epoll", "threads"):  # the receive engines, same run, same stream count
            c = cases[f"random_plain_{n}_engine_{kind}"]
            res["ratios"][f"random_plain_{n}_engine_{kind}_vs_iperf3_1_to_file"] = c["bytes_per_s"] / to_file
            res["ratios"][f"random_plain_{n}_engine_{kind}_cpu_vs_iperf3_1_to_file"] = (
                c["cpu_s_per_gb"] / res["iperf3_1_stream_to_file_cpu_s_per_gb"]
            )
        floors = [delta_floor(v1, v2, os.path.join(tmp, "floor.out")) for _ in range(runs)]
        floor = statistics.median(f["seconds"] for f in floors)
        res["delta_memory_floor"] = {**min(floors, key=lambda f: f["seconds"]), "seconds": floor}
        res["ratios"]["delta_dwcp_vs_memory_floor"] = cases["delta_5pct"]["seconds"] / floor
        for name, p in peers.items():
            # the most any delta tool could be faster than this peer here
            res["ratios"][f"delta_{name}_vs_memory_floor"] = p["seconds"] / floor
            res["ratios"][f"delta_wire_vs_{name}"] = cases["delta_5pct"]["wire_bytes"] / max(
                1, p["wire_bytes"]
            )
            res["ratios"][f"delta_speedup_vs_{name}"] = p["seconds"] / cases["delta_5pct"]["seconds"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = write_json(res, args.out, "bench_transfer.json")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = ["iperf3 1", f"iperf3 {args.streams}", "python socket", "iperf3 1 -F (stores)",
                 "dd (stores, no network)"] + list(res["dwcp"])[:-1]  # fmt: skip
        vals = [res["iperf3_1_stream_bytes_per_s"], res[f"iperf3_{args.streams}_streams_bytes_per_s"],
                res["python_socket_bytes_per_s"], res["iperf3_1_stream_to_file_bytes_per_s"],
                res["dd_store_bytes_per_s"]] + [c["bytes_per_s"] for c in list(res["dwcp"].values())[:-1]]  # fmt: skip
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.barh(names, [v / 1e9 for v in vals])
        ax.set_xlabel("GB/s (effective, loopback)")
        fig.tight_layout()
        fig.savefig(os.path.splitext(path)[0] + ".png", dpi=100)
    except ImportError:
        print("(matplotlib not installed: no PNG)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.makedirs(RESULTS, exist_ok=True)
    raise SystemExit(main())
