"""The cost of mutual TLS 1.3 on loopback: bytes/s over a plain socket vs over TLS.

Two threads on 127.0.0.1: a sender ``sendall``s SIZE bytes in CHUNK pieces,
a receiver ``recv_into``s them into a CHUNK buffer and answers one byte when
it has them all; the clock runs from the end of the handshake to that byte.
TLS uses dwcp's own contexts (``dwcp.security.tls``: mutual auth, TLS 1.3,
OpenSSL's default AEAD suite), and the negotiated cipher is reported.  Plain
and TLS runs alternate; each side is the median of RUNS runs, after one
warm-up run each.  Handshake time (TCP connect + mutual TLS) is reported
separately, and so is each side's CPU time per byte (``time.thread_time``),
which says more than the rate on a machine that other work shares.

    python perf/bench_tls.py            # 512 MiB, 3 runs
    python perf/bench_tls.py --quick    # 128 MiB, 3 runs (a few seconds)

Writes perf/results/bench_tls.json (or --out) and prints the same JSON.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import machine, write_json  # noqa: E402

from dwcp.security.certs import init_ca, issue_node  # noqa: E402
from dwcp.security.tls import TLSConfig, client_context, server_context  # noqa: E402

TIMEOUT_S = 60.0  # per socket operation: a stuck run fails instead of hanging


def _receiver(listener: socket.socket, ctx: ssl.SSLContext | None, size: int, chunk: int, box: dict) -> None:
    try:
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT_S)
        cpu0 = time.thread_time()
        s = ctx.wrap_socket(conn, server_side=True) if ctx else conn
        with s:
            buf = bytearray(chunk)
            view = memoryview(buf)
            left = size
            while left:
                n = s.recv_into(view, min(chunk, left))
                if not n:
                    raise ConnectionError(f"sender closed with {left} bytes to go")
                left -= n
            box["cpu_s"] = time.thread_time() - cpu0
            s.sendall(b"!")
    except BaseException as exc:  # reported by the sender's thread
        box["error"] = exc


def one_run(ctx_pair: tuple[ssl.SSLContext, ssl.SSLContext] | None, size: int, chunk: int) -> dict:
    """Move ``size`` bytes once; return seconds for the transfer and for the handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT_S)
    box: dict = {}
    rx = threading.Thread(
        target=_receiver, args=(listener, ctx_pair[0] if ctx_pair else None, size, chunk, box), daemon=True
    )
    rx.start()
    payload = memoryview(os.urandom(chunk))
    try:
        t_connect = time.perf_counter()
        raw = socket.create_connection(listener.getsockname(), timeout=TIMEOUT_S)
        s = ctx_pair[1].wrap_socket(raw) if ctx_pair else raw
        with s:
            t0, cpu0 = time.perf_counter(), time.thread_time()
            left = size
            while left:
                n = min(chunk, left)
                s.sendall(payload[:n])
                left -= n
            if s.recv(1) != b"!":
                raise ConnectionError(f"receiver failed: {box.get('error')!r}")
            t1, cpu1 = time.perf_counter(), time.thread_time()
            cipher = s.cipher() if isinstance(s, ssl.SSLSocket) else None
    finally:
        rx.join(TIMEOUT_S)
        listener.close()
    if "error" in box:
        raise box["error"]
    return {
        "seconds": t1 - t0,
        "handshake_s": t0 - t_connect,
        "sender_cpu_s": cpu1 - cpu0,
        "receiver_cpu_s": box["cpu_s"],  # includes its half of the handshake when TLS is on
        "cipher": cipher,
    }


def run(size: int, runs: int, chunk: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="dwcp-bench-tls-") as tmp:
        init_ca(os.path.join(tmp, "ca"), cluster_name="bench")
        a = issue_node(os.path.join(tmp, "ca"), "rx")
        b = issue_node(os.path.join(tmp, "ca"), "tx")
        ctxs = (
            server_context(TLSConfig(a.ca_cert, a.cert, a.key)),
            client_context(TLSConfig(b.ca_cert, b.cert, b.key)),
        )
        one_run(None, min(size, 32 << 20), chunk)  # warm-up: page in buffers, settle the threads
        one_run(ctxs, min(size, 32 << 20), chunk)
        plain, tls = [], []
        for _ in range(runs):  # alternate so that drift in the machine's load hits both alike
            plain.append(one_run(None, size, chunk))
            tls.append(one_run(ctxs, size, chunk))

    def rates(rs: list[dict]) -> list[float]:
        return [size / r["seconds"] for r in rs]

    def cpu_ns_per_byte(rs: list[dict], side: str) -> float:
        return 1e9 * statistics.median(r[f"{side}_cpu_s"] for r in rs) / size

    def summary(rs: list[dict]) -> dict:
        return {
            "bytes_per_s": statistics.median(rates(rs)),
            "runs_bytes_per_s": rates(rs),
            "sender_cpu_ns_per_byte": cpu_ns_per_byte(rs, "sender"),
            "receiver_cpu_ns_per_byte": cpu_ns_per_byte(rs, "receiver"),
        }

    name, version, bits = tls[0]["cipher"]
    p, t = summary(plain), summary(tls)
    return {
        "size_bytes": size,
        "chunk_bytes": chunk,
        "runs": runs,
        "plain": p,
        "tls": {
            **t,
            "cipher": name,
            "version": version,
            "cipher_bits": bits,
            "handshake_ms_median": 1e3 * statistics.median(r["handshake_s"] for r in tls),
        },
        "ratio_tls_over_plain": t["bytes_per_s"] / p["bytes_per_s"],
        "openssl": ssl.OPENSSL_VERSION,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="128 MiB per run instead of 512 MiB")
    ap.add_argument("--size-mib", type=int, help="bytes per run, in MiB (default: 512, or 128 with --quick)")
    ap.add_argument("--runs", type=int, default=3, help="runs per side; the median is reported (default: 3)")
    ap.add_argument(
        "--chunk-kib", type=int, default=1024, help="sendall/recv_into size in KiB (default: 1024)"
    )
    ap.add_argument("--out", help="JSON path (default: perf/results/bench_tls.json)")
    a = ap.parse_args(argv)
    size = (a.size_mib or (128 if a.quick else 512)) << 20
    if size <= 0 or a.runs < 1 or a.chunk_kib < 1:
        ap.error("--size-mib, --runs and --chunk-kib must be positive")
    write_json(run(size, a.runs, a.chunk_kib << 10), a.out, "bench_tls.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
