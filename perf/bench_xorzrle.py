"""Fused XOR+ZRLE kernels: GB/s per core on 5%-dirty VM-like pages.

The image is ``dwcp._testbase.images.vm_image`` (60% zero, 30% text, 10%
random 4 KiB pages); the next version changes 5% of its pages in 1-16 bytes
each.  The fast kernels run on 4 MiB chunks, as the codec pipeline calls
them.  GB/s are bytes of raw input (the new version) per second, one
thread, median of several runs after a warm-up run.

Peers in the same run:

* numpy: ``np.bitwise_xor(old, new, out=x)`` + ``np.count_nonzero(x)``, the
  obvious numpy way to find out *that* something changed (only half of an
  encoder's job, and no decoder at all);
* memcpy: ``np.copyto`` of the image, the memory-bandwidth ceiling for
  anything that writes the whole image (an out-of-place decode does).

Targets (DESIGN.md): encode >= 4 GB/s, decode >= 5 GB/s per core.
Writes perf/results/bench_xorzrle.json (or --out) and prints the JSON.
``run(quick)`` is embedded by perf/bench_codec.py.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # run from a source checkout (build_ext --inplace)

import numpy as np  # noqa: E402
from _common import machine, median_time, write_json  # noqa: E402

from dwcp._backend import load  # noqa: E402
from dwcp._testbase.images import dirty_version, vm_image  # noqa: E402

CHUNK = 4 << 20
DIRTY = 0.05


def run(quick: bool = False) -> dict:
    fast = load("fast")
    size = (64 if quick else 256) << 20
    runs = 11 if quick else 21  # a run is milliseconds; the image build dominates
    old = vm_image(size, seed=1)
    new = dirty_version(old, fraction=DIRTY, seed=2)
    offsets = range(0, size, CHUNK)
    out = np.empty(fast.delta_bound(CHUNK), np.uint8)
    payloads: list[bytes] = []

    def encode() -> None:
        payloads.clear()
        for off in offsets:
            n = fast.delta_encode(old[off : off + CHUNK], new[off : off + CHUNK], out)
            payloads.append(out[:n].tobytes())

    t_enc, _ = median_time(encode, runs)
    dst = np.empty_like(old)

    def decode() -> None:  # out of place: copy the base chunk, then patch
        for p, off in zip(payloads, offsets):
            fast.delta_decode(p, old[off : off + CHUNK], dst[off : off + CHUNK])

    t_dec, _ = median_time(decode, runs)
    assert (dst == new).all()
    np.copyto(dst, old)

    def decode_inplace() -> None:  # the receiver patches its baseline copy; idempotent
        for p, off in zip(payloads, offsets):
            chunk = dst[off : off + CHUNK]
            fast.delta_decode(p, chunk, chunk)

    t_inp, _ = median_time(decode_inplace, runs)
    assert (dst == new).all()
    t_scan, _ = median_time(lambda: fast.scan_dirty(old, new), runs)
    x = np.empty_like(old)

    def numpy_xor() -> None:
        np.bitwise_xor(old, new, out=x)
        np.count_nonzero(x)

    t_np, _ = median_time(numpy_xor, runs)
    t_cpy, _ = median_time(lambda: np.copyto(dst, old), runs)

    def gbs(t: float) -> float:
        return size / t / 1e9

    wire = sum(len(p) for p in payloads)
    timed = {"encode": t_enc, "decode": t_dec, "scan_dirty": t_scan}
    res: dict = {
        "image_bytes": size,
        "chunk_bytes": CHUNK,
        "dirty_fraction": DIRTY,
        "dirty_pages": int(sum(fast.scan_dirty(old, new))),
        "runs": runs,
        "delta_payload_bytes": wire,
        "delta_ratio": size / wire,
        "numpy_xor_count_gb_per_s": gbs(t_np),
        "memcpy_gb_per_s": gbs(t_cpy),
        # in place only the dirty pages are touched: not a bandwidth figure, so no GB/s
        "decode_inplace_ms": t_inp * 1e3,
    }
    for name, t in timed.items():
        res[f"{name}_gb_per_s"] = gbs(t)
        res[f"{name}_vs_numpy_xor"] = t_np / t
        res[f"{name}_vs_memcpy"] = t_cpy / t
    res["targets"] = {"encode_ge_4_gb_per_s": gbs(t_enc) >= 4, "decode_ge_5_gb_per_s": gbs(t_dec) >= 5}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 MiB instead of 256 MiB, 11 runs (< 30 s)")
    ap.add_argument("--out", help="JSON file (default perf/results/bench_xorzrle.json)")
    args = ap.parse_args()
    write_json({"machine": machine(), **run(args.quick)}, args.out, "bench_xorzrle.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
