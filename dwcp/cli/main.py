"""`dwcp` subcommands.  Every error is one clear line on stderr and a non-zero
exit code, never a traceback (set DWCP_TRACEBACK=1 to see one)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dwcp._version import __version__
from dwcp.errors import DWCPError

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


def _size(text: str) -> int:
    """Parse a byte size: 4096, 64K, 256M, 1G (binary multiples)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 4096, 64K, 256M, 1G)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"size must be >= 0: {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dwcp", description="WAN data-plane daemon: verified delta transfer")
    p.add_argument("--version", action="version", version=f"dwcp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="the main job on an embedded default (see README)")
    d.add_argument("--size", type=_size, default=1 << 30, help="image size (default 1G)")
    d.add_argument("--dirty", type=float, default=0.05, help="fraction of pages changed in v2 (default 0.05)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding threads")
    d.add_argument("--json", action="store_true", help="one JSON object on stdout")

    sub.add_parser("backend", help="print the data-plane backend in use and its features")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        if args.command == "backend":
            import dwcp

            print(json.dumps({"backend": dwcp.backend, "features": dwcp.backend_features}))
            return 0
    except KeyboardInterrupt:
        print("dwcp: interrupted", file=sys.stderr)
        return 130
    except (DWCPError, OSError, ImportError, ValueError) as exc:
        if os.environ.get("DWCP_TRACEBACK"):
            raise
        print(f"dwcp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE
