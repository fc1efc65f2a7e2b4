"""HDE codec benchmark: dwcp vs numpy+zstd, `zstd --patch-from` and `xdelta3`.

On a generated VM-like image (60% zero, 30% text-like, 10% random pages)
and its next version (5% of pages changed in a few bytes), in the same run:

* full encode of v1 (dwcp chunk codec, 1 thread): GB/s of raw input, wire bytes;
* delta of v2 against v1:
    - dwcp (fused XOR+ZRLE per chunk, zstd on top when it pays), 1 thread;
    - numpy XOR + zstd -1 of the XOR (the obvious Python baseline);
    - `zstd --patch-from=v1 v2` (zstd CLI, default level, 1 thread);
    - `xdelta3 -e -s v1 v2`;
  wire bytes and seconds for each, and dwcp's ratios against each;
* the fused kernels alone (perf/bench_xorzrle.py) and the ring buffers
  (perf/bench_ring.py), embedded.

Every timing is the median of several runs.  `--quick` finishes in about a
minute on 2 cores.  Writes perf/results/bench_codec.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import zstandard  # noqa: E402
from _common import ensure_tool, machine, median_time, write_json  # noqa: E402

from dwcp._backend import impl as K  # noqa: E402
from dwcp._testbase.images import dirty_version, vm_image  # noqa: E402
from dwcp.codec import ChunkDecoder, ChunkEncoder, CodecConfig, chunk_spans  # noqa: E402
from dwcp.digest import object_digest  # noqa: E402
from dwcp.wire import consts as C  # noqa: E402

CHUNK = 4 << 20  # the transfer's default chunk size


def _encode_all(enc: ChunkEncoder, v: np.ndarray, base: np.ndarray | None, base_digest: bytes | None) -> list:
    """Every chunk of ``v`` as a transfer encodes it (a delta against ``base`` when given)."""
    out = []
    for off, ln in chunk_spans(v.nbytes, CHUNK):
        chunk = v[off : off + ln]
        if base is None:
            out.append(enc.encode(chunk, offset=off))
        else:
            out.append(enc.encode(chunk, offset=off, base=base[off : off + ln], base_digest=base_digest))
    return out


def _dwcp_full(enc: ChunkEncoder, v1: np.ndarray) -> dict:
    frames: list = []

    def run():
        frames[:] = _encode_all(enc, v1, None, None)

    t, ts = median_time(run, RUNS)
    wire = sum(f.wire_len for f in frames)
    codecs: dict[str, int] = {}
    from dwcp.wire.consts import CODEC_NAMES

    for f in frames:
        codecs[CODEC_NAMES[f.codec]] = codecs.get(CODEC_NAMES[f.codec], 0) + 1
    return {"seconds": t, "runs": ts, "wire_bytes": wire, "gb_per_s": v1.nbytes / t / 1e9, "codecs": codecs}


def _dwcp_delta(enc: ChunkEncoder, v1: np.ndarray, v2: np.ndarray) -> dict:
    digest = object_digest(v1)
    frames: list = []

    def run():
        frames[:] = _encode_all(enc, v2, v1, digest)

    t, ts = median_time(run, RUNS)
    wire = sum(f.wire_len for f in frames)
    # decode on the "receiver" (each chunk against the base, verified by its hash), timed as well
    rx = [(K.parse_header(f.header), bytes(f.payload)) for f in frames]
    out = np.empty_like(v2)
    dec = ChunkDecoder()

    def decode():
        for h, payload in rx:
            o, n = h.offset, h.raw_len
            dec.decode(
                h, payload, base=v1[o : o + n] if h.codec in C.DELTA_CODECS else None, out=out[o : o + n]
            )

    td, _ = median_time(decode, RUNS)
    assert out.tobytes() == v2.tobytes()
    return {"seconds": t, "runs": ts, "wire_bytes": wire, "gb_per_s": v2.nbytes / t / 1e9,
            "decode_seconds": td, "decode_gb_per_s": v2.nbytes / td / 1e9}  # fmt: skip


def _numpy_xor_zstd(v1: np.ndarray, v2: np.ndarray) -> dict:
    cctx = zstandard.ZstdCompressor(level=-1)
    x = np.empty_like(v1)
    size = [0]

    def run():
        np.bitwise_xor(v1, v2, out=x)
        size[0] = len(cctx.compress(x))

    t, ts = median_time(run, RUNS)
    return {"seconds": t, "runs": ts, "wire_bytes": size[0], "gb_per_s": v1.nbytes / t / 1e9}


def _cli(name: str, argv_fn, tmp: str, v1p: str, v2p: str, nbytes: int) -> dict:
    out = os.path.join(tmp, name + ".out")

    def run():
        if os.path.exists(out):
            os.unlink(out)
        subprocess.run(
            argv_fn(v1p, v2p, out), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    t, ts = median_time(run, RUNS_CLI)
    return {"seconds": t, "runs": ts, "wire_bytes": os.path.getsize(out), "gb_per_s": nbytes / t / 1e9}


def main() -> int:
    global RUNS, RUNS_CLI
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small image, fewer runs (about a minute)")
    ap.add_argument("--size-mib", type=int, default=None, help="image size (default 256, quick 64)")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-kernels", action="store_true", help="skip the embedded kernel/ring benchmarks")
    args = ap.parse_args()
    size = (args.size_mib or (64 if args.quick else 256)) << 20
    RUNS = args.runs or (3 if args.quick else 5)
    RUNS_CLI = max(1, RUNS - 2) if args.quick else RUNS

    t0 = time.perf_counter()
    v1 = vm_image(size, seed=1)
    v2 = dirty_version(v1, fraction=0.05, seed=2)
    result: dict = {"machine": machine(), "image_bytes": size, "dirty_fraction": 0.05, "runs": RUNS}

    # 1 thread, zstd level adaptive for a 10 Gbit/s link (the default config)
    enc = ChunkEncoder(CodecConfig())
    result["dwcp_full"] = _dwcp_full(enc, v1)
    result["dwcp_delta"] = _dwcp_delta(enc, v1, v2)
    result["numpy_xor_zstd"] = _numpy_xor_zstd(v1, v2)

    peers = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        v1p, v2p = os.path.join(tmp, "v1"), os.path.join(tmp, "v2")
        v1.tofile(v1p)
        v2.tofile(v2p)
        zstd = ensure_tool("zstd")
        if zstd:
            peers["zstd_patch_from"] = _cli(
                "zstd", lambda a, b, o: [zstd, "-q", "-f", "-T1", f"--patch-from={a}", b, "-o", o],
                tmp, v1p, v2p, size,
            )  # fmt: skip
        xdelta3 = ensure_tool("xdelta3")
        if xdelta3:
            peers["xdelta3"] = _cli(
                "xdelta3", lambda a, b, o: [xdelta3, "-e", "-f", "-s", a, b, o], tmp, v1p, v2p, size
            )
    result.update(peers)

    d = result["dwcp_delta"]
    ratios = {}
    for name in ("numpy_xor_zstd", *peers):
        p = result[name]
        ratios[name] = {
            "speedup": p["seconds"] / d["seconds"],
            "wire_bytes_ratio": d["wire_bytes"] / p["wire_bytes"],  # < 1: dwcp sends less
        }
    result["dwcp_delta_vs"] = ratios
    result["targets"] = {
        "delta_wire_le_cli_peers": all(ratios[n]["wire_bytes_ratio"] <= 1.0 for n in peers)
        if peers
        else None,
        "delta_20x_faster_than_cli_peers": all(ratios[n]["speedup"] >= 20 for n in peers) if peers else None,
    }

    if not args.no_kernels:
        import bench_ring
        import bench_xorzrle

        result["kernels"] = bench_xorzrle.run(quick=args.quick)
        result["ring"] = bench_ring.run(quick=args.quick)
    result["wall_seconds"] = time.perf_counter() - t0
    write_json(result, args.out, "bench_codec.json")
    return 0


RUNS = 3
RUNS_CLI = 3

if __name__ == "__main__":
    raise SystemExit(main())
