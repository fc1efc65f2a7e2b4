"""io_uring send/recv vs Python sockets over one loopback TCP connection (same run).

What is measured (one run each, wall clock, bytes received / seconds):

* ``uring``: one thread, one Ring driving both ends of a 127.0.0.1 TCP
  connection: a send of a 1 MiB buffer and a recv into a 1 MiB buffer are
  kept in flight, each re-queued at its CQE (short sends resume where they
  stopped), until ``--mib`` MiB have arrived.  The thread waits in
  io_uring_enter with the GIL released.
* ``python``: a sender thread doing ``socket.sendall`` of the same 1 MiB
  buffer and the main thread doing ``recv_into`` a 1 MiB buffer, the usual
  threaded way (both calls release the GIL).

Loopback TCP measures the syscall and copy path, not a network.  Both move
the same bytes through the same kernel; the difference is the number of
syscalls and threads.

Usage: python perf/bench_uring.py [--mib 1024] [--out FILE]; JSON goes to stdout and to FILE
(default perf/results/bench_uring.json).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # run from a source checkout (build_ext --inplace)

from _common import machine, write_json  # noqa: E402

from dwcp._fast import uring  # noqa: E402

CHUNK = 1 << 20


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    srv.close()
    for x in (c, s):
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c, s


def bench_uring(total: int) -> float:
    c, s = _tcp_pair()
    out = memoryview(os.urandom(CHUNK))
    inbuf = bytearray(CHUNK)
    sent = received = 0
    send_pos = 0  # offset into ``out`` of the send in flight
    ud_send, ud_recv = 1, 2
    t0 = time.perf_counter()
    with uring.Ring(8) as r:
        r.prep_send(c.fileno(), out, 0, ud_send)
        r.prep_recv(s.fileno(), inbuf, 0, ud_recv)
        while received < total:
            r.submit_and_wait(1)
            for ud, res, _flags in r.reap():
                if res < 0:
                    raise OSError(-res, os.strerror(-res))
                if ud == ud_send:
                    sent += res
                    send_pos = (send_pos + res) % CHUNK
                    if sent < total:
                        r.prep_send(
                            c.fileno(), out[send_pos : min(CHUNK, send_pos + total - sent)], 0, ud_send
                        )
                else:
                    received += res
                    if res == 0:
                        raise EOFError("peer closed early")
                    if received < total:
                        r.prep_recv(s.fileno(), inbuf, 0, ud_recv)
    dt = time.perf_counter() - t0
    c.close()
    s.close()
    return dt


def bench_python(total: int) -> float:
    c, s = _tcp_pair()
    out = os.urandom(CHUNK)
    inbuf = bytearray(CHUNK)

    def send() -> None:
        left = total
        while left:
            n = min(left, CHUNK)
            c.sendall(out[:n] if n < CHUNK else out)
            left -= n

    t0 = time.perf_counter()
    th = threading.Thread(target=send)
    th.start()
    received = 0
    while received < total:
        n = s.recv_into(inbuf)
        if n == 0:
            raise EOFError("peer closed early")
        received += n
    th.join()
    dt = time.perf_counter() - t0
    c.close()
    s.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024, help="MiB to move per variant")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    total = args.mib * CHUNK
    if not uring.uring_available():
        sys.exit("io_uring is not available on this kernel")
    result: dict = {"machine": machine(), "bytes": total, "chunk": CHUNK, "runs": 1}
    for name, fn in (("uring", bench_uring), ("python", bench_python)):
        dt = fn(total)
        result[name] = {"seconds": round(dt, 4), "gbit_per_s": round(total * 8 / dt / 1e9, 2)}
    result["uring_vs_python"] = round(result["python"]["seconds"] / result["uring"]["seconds"], 2)
    write_json(result, args.out, "bench_uring.json")


if __name__ == "__main__":
    main()
