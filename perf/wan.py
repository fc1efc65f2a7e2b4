"""Build the emulated WAN testbed and check the emulator itself.

    sudo python perf/wan.py --rate-mbit 1000 --rtt-ms 50 --loss 0.001 [--jitter-ms 2] [--seconds 5]

Two network namespaces joined by TUN devices and a user-space delay relay
(this kernel has no netem): tbf caps the rate, iptables `statistic` drops
packets where they arrive, the relay adds rtt/2 each way (see
dwcp/_testbase/wan.py).  Measures RTT (ping), rate (iperf3 -P 4) and loss
(iperf3 UDP) and reports each against its setting; exit 1 when RTT or rate
is off by more than 10%, or loss by more than 10% plus three standard errors
of its own estimate.  Writes perf/results/wan.json.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import exit_cleanly_on_sigterm, machine, write_json  # noqa: E402

from dwcp._testbase.wan import Link, Testbed  # noqa: E402


def check(m: dict) -> list[str]:
    """What is off by more than the tolerance (empty: the emulator holds its settings)."""
    s = m["set"]
    bad = []
    if m.get("rtt_ms") is None:
        bad.append("no RTT measured (ping failed)")
    elif s["rtt_ms"] and abs(m["rtt_ms"]["avg"] - s["rtt_ms"]) > 0.1 * s["rtt_ms"] + 0.3:
        bad.append(f"RTT {m['rtt_ms']['avg']:.2f} ms vs {s['rtt_ms']} ms set")
    if s["rate_bit_s"]:
        r = m.get("rate_bit_s")
        if not r or abs(r - s["rate_bit_s"]) > 0.1 * s["rate_bit_s"]:
            bad.append(f"rate {r} bit/s vs {s['rate_bit_s']:.0f} set")
    if m.get("loss") is None:
        bad.append("no loss measured (iperf3 UDP failed)")
    elif abs(m["loss"] - s["loss"]) > 0.1 * s["loss"] + 3 * (m["loss_stderr"] or 0):
        bad.append(f"loss {m['loss']:.5f} vs {s['loss']} set (+-{m['loss_stderr']:.5f})")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate-mbit", type=float, default=1000)
    ap.add_argument("--rtt-ms", type=float, default=50)
    ap.add_argument("--jitter-ms", type=float, default=0)
    ap.add_argument("--loss", type=float, default=0.001)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    why = Testbed.unavailable()
    if why:
        print(f"wan.py: {why}", file=sys.stderr)
        return 2
    link = Link(rate_bit_s=args.rate_mbit * 1e6, rtt_ms=args.rtt_ms, jitter_ms=args.jitter_ms, loss=args.loss)
    with Testbed(link) as tb:
        m = tb.measure(seconds=args.seconds)
        m["relay"] = tb.relay_stats()
    m["machine"] = machine()
    m["problems"] = check(m)
    write_json(m, args.out, "wan.json")
    return 1 if m["problems"] else 0


if __name__ == "__main__":
    exit_cleanly_on_sigterm()
    raise SystemExit(main())
