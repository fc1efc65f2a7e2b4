"""`dwcp demo`: the main job on an embedded default.

Until the transfer lands this runs the HDE codec story in process: a
generated VM-like image is encoded in full, then a version with 5% of its
pages dirtied is encoded as a delta against it; each is decoded back on the
"receiver" side and verified (xxh3-128 of the whole object).
"""

from __future__ import annotations

import json
import sys
import time

import dwcp
from dwcp._testbase.images import dirty_version, vm_image
from dwcp.codec import BaselineStore, ChunkEncoder, CodecConfig, HDEDecoder, HDEEncoder
from dwcp.wire.frames import Frame


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def run_demo(args) -> int:
    from dwcp._backend import impl as K

    size = args.size - args.size % 4096
    if size <= 0:
        raise ValueError("--size must be at least 4096 bytes")
    out = sys.stderr if args.json else sys.stdout
    print(f"dwcp demo: generating a {_human(size)} VM-like image (60% zero, 30% text, 10% random pages)", file=out)
    v1 = vm_image(size, seed=args.seed)
    v2 = dirty_version(v1, fraction=args.dirty, seed=args.seed + 1)
    enc = HDEEncoder(ChunkEncoder(CodecConfig()), BaselineStore(), workers=max(1, args.workers))
    dec = HDEDecoder()
    rows = []
    held = None
    for i, data in enumerate((v1, v2)):
        now = time.monotonic()
        plan = enc.plan("demo/vm", data, now)
        t0 = time.perf_counter()
        frames = [Frame(K.parse_header(f.header), bytes(f.payload)) for f in enc.encode_object(data, plan)]
        t1 = time.perf_counter()
        got = dec.decode_object(frames, plan.size, plan.digest, base=held)
        t2 = time.perf_counter()
        wire = sum(64 + len(f.payload) for f in frames)
        verified = K.xxh3_128(got) == plan.digest
        held = got
        enc.commit("demo/vm", data, plan, now)
        rows.append({
            "version": i + 1, "mode": plan.mode, "raw_bytes": size, "wire_bytes": wire,
            "ratio": size / wire, "encode_s": t1 - t0, "decode_s": t2 - t1,
            "throughput_bytes_per_s": size / (t2 - t0), "digest": plan.digest.hex(), "verified": verified,
        })  # fmt: skip
    result = {"backend": dwcp.backend, "image_bytes": size, "dirty_fraction": args.dirty, "sends": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'ver':>3} {'mode':<6} {'raw':>10} {'wire':>10} {'ratio':>8} {'enc+dec rate':>13} verified")
        for r in rows:
            print(f"{r['version']:>3} {r['mode']:<6} {_human(r['raw_bytes']):>10} {_human(r['wire_bytes']):>10} "
                  f"{r['ratio']:>7.1f}x {_human(r['throughput_bytes_per_s']) + '/s':>13} {r['verified']}")  # fmt: skip
    return 0 if all(r["verified"] for r in rows) else 1
