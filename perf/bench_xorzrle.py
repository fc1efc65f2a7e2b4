"""Fused XOR+ZRLE kernels: GB/s per core on 5%-dirty VM-like pages.

Peers in the same run: numpy XOR + count_nonzero (the obvious numpy way to
find what changed, which is only half the job) and a plain memcpy (the
memory-bandwidth ceiling).  Medians of several runs, one thread.
Writes perf/results/bench_xorzrle.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from _common import machine, median_time, write_json  # noqa: E402

from dwcp._backend import load  # noqa: E402
from dwcp._testbase.images import dirty_version, vm_image  # noqa: E402


def run(quick: bool = False) -> dict:
    fast = load("fast")
    size = (64 if quick else 256) << 20
    runs = 5 if quick else 9
    old = vm_image(size, seed=1)
    new = dirty_version(old, fraction=0.05, seed=2)
    chunk = 4 << 20
    out = np.empty(fast.delta_bound(chunk), np.uint8)
    payloads = []

    def encode():
        payloads.clear()
        for off in range(0, size, chunk):
            n = fast.delta_encode(old[off : off + chunk], new[off : off + chunk], out)
            payloads.append(out[:n].tobytes())

    t_enc, _ = median_time(encode, runs)
    dst = np.empty_like(old)

    def decode():
        for i, off in enumerate(range(0, size, chunk)):
            fast.delta_decode(payloads[i], old[off : off + chunk], dst[off : off + chunk])

    t_dec, _ = median_time(decode, runs)
    assert (dst == new).all()
    t_scan, _ = median_time(lambda: fast.scan_dirty(old, new), runs)
    x = np.empty_like(old)

    def numpy_xor():
        np.bitwise_xor(old, new, out=x)
        np.count_nonzero(x)

    t_np, _ = median_time(numpy_xor, runs)
    t_cpy, _ = median_time(lambda: np.copyto(dst, old), runs)
    gbs = lambda t: size / t / 1e9  # noqa: E731
    wire = sum(len(p) for p in payloads)
    res = {
        "image_bytes": size, "dirty_fraction": 0.05, "runs": runs, "chunk_bytes": chunk,
        "delta_payload_bytes": wire, "delta_ratio": size / wire,
        "encode_gb_per_s": gbs(t_enc), "decode_gb_per_s": gbs(t_dec), "scan_dirty_gb_per_s": gbs(t_scan),
        "numpy_xor_count_gb_per_s": gbs(t_np), "memcpy_gb_per_s": gbs(t_cpy),
        "encode_vs_numpy_xor": t_np / t_enc, "decode_vs_numpy_xor": t_np / t_dec,
        "encode_vs_memcpy": t_cpy / t_enc, "decode_vs_memcpy": t_cpy / t_dec,
        "targets": {"encode_ge_4_gb_per_s": gbs(t_enc) >= 4, "decode_ge_5_gb_per_s": gbs(t_dec) >= 5},
    }  # fmt: skip
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    write_json({"machine": machine(), **run(args.quick)}, args.out, "bench_xorzrle.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
