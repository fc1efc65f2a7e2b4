"""`dwcp tune`: each NIC's facts and the stream profile that follows.

    dwcp tune [--json] [--apply] [--rtt-ms MS] [--interface IF]... [--state-dir DIR] [--config FILE]

Nothing is measured: the profile is for ``--rtt-ms`` (default 1 ms, a LAN or
loopback; pass your WAN path's RTT, e.g. from ping).  ``--apply`` writes the
profiles to ``<state dir>/tune.json``, where the transport reads them; the
state dir is ``--state-dir``, else ``storage.data_dir`` of ``--config``, else
/var/lib/dwcp.  Errors raise ConfigError, which ``dwcp.cli.main`` (or
``main()`` here, for ``python -m dwcp.cli.tune_cmd``) turns into one line on
stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from dwcp.errors import ConfigError, DWCPError

__all__ = ["add_parser", "run", "main"]


def _rtt_ms(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rtt-ms takes a number of milliseconds, not {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"--rtt-ms must be a positive number of milliseconds, not {text!r}")
    return v


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtt-ms", type=_rtt_ms, default=None,
                   help="the path RTT the profiles are for, in ms (default: 1 ms, a LAN/loopback; nothing is measured)")  # fmt: skip
    p.add_argument("--interface", action="append", metavar="IF", help="only this NIC (repeatable)")
    p.add_argument(
        "--apply", action="store_true", help="write the profiles to <state dir>/tune.json for the transport"
    )
    p.add_argument(
        "--state-dir", help="where --apply writes (default: storage.data_dir of --config, else /var/lib/dwcp)"
    )
    p.add_argument("--config", help="dwcp.toml, for its storage.data_dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_parser(sub: argparse._SubParsersAction) -> None:
    _arguments(
        sub.add_parser("tune", help="read each NIC (speed, MTU, queues, offloads) and derive stream profiles")
    )


def _state_dir(args: argparse.Namespace) -> str:
    from dwcp.tune import DEFAULT_STATE_DIR

    if args.state_dir:
        return str(args.state_dir)
    if args.config:
        from dwcp.config import load_toml

        return load_toml(args.config).storage.data_dir
    return DEFAULT_STATE_DIR


_CARRIER = {True: "on", False: "off", None: "unknown"}


def _fmt(v: object, unit: str = "") -> str:
    return "unknown" if v is None else f"{v}{unit}"


def _human(report: dict) -> str:
    lines = [f"RTT {report['rtt_s'] * 1000:g} ms ({report['rtt_source']})"]
    profiles = {p["nic"]: p for p in report["profiles"]}
    for n in report["nics"]:
        p = profiles[n["name"]]
        offloads = " ".join(f"{k}={'on' if v else 'off'}" for k, v in n["offloads"].items()) or "unknown"
        lines += [
            f"{n['name']}: {'speed ' + _fmt(n['speed_mbit_s'], ' Mbit/s')} {n['duplex'] or ''}".rstrip()
            + f", mtu {_fmt(n['mtu'])}, queues tx {_fmt(n['tx_queues'])} rx {_fmt(n['rx_queues'])}, "
            f"driver {n['driver'] or '-'}, carrier {_CARRIER[n['carrier']]}, {n['operstate'] or 'unknown'}",
            f"  offloads: {offloads}",
            f"  streams {p['min_streams']}/{p['initial_streams']}/{p['max_streams']} (min/initial/max), "
            f"window {p['per_stream_window_bytes']} B, buffer {p['socket_buffer_bytes'] or 'autotuned'}, "
            f"chunk {p['chunk_size_bytes']} B",
            f"  {p['why']}",
        ]
        lines += [f"  warning: {w}" for w in p["warnings"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    if report.get("applied"):
        lines.append(f"wrote {report['applied']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from dwcp.tune import (
        DEFAULT_RTT_S,
        apply_profiles,
        congestion_warnings,
        read_nics,
        read_sysctls,
        stream_profile,  # fmt: skip
    )

    nics = read_nics(args.interface)
    missing = sorted(set(args.interface or ()) - {n.name for n in nics})
    if missing:
        raise ConfigError(f"no such interface: {', '.join(missing)}")
    rtt_s = args.rtt_ms / 1000 if args.rtt_ms is not None else DEFAULT_RTT_S
    sysctls = read_sysctls()
    profiles = [stream_profile(n, rtt_s=rtt_s, sysctls=sysctls).to_dict() for n in nics]
    report: dict = {
        "rtt_s": rtt_s, "rtt_source": "--rtt-ms" if args.rtt_ms is not None else "default (not measured)",
        "nics": [n.to_dict() for n in nics], "sysctls": sysctls.to_dict(), "profiles": profiles,
        "warnings": congestion_warnings(sysctls), "applied": None,
    }  # fmt: skip
    if args.apply:
        report["applied"] = apply_profiles(_state_dir(args), profiles, rtt_s=rtt_s)
    print(json.dumps(report) if args.json else _human(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dwcp.cli.tune_cmd``: the same command outside ``dwcp``'s dispatcher."""
    p = argparse.ArgumentParser(prog="dwcp tune", description="per-NIC stream profiles")
    _arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (DWCPError, OSError, ValueError) as exc:
        if os.environ.get("DWCP_TRACEBACK"):
            raise
        print(f"dwcp tune: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
