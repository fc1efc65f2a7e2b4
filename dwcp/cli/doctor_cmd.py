"""`dwcp doctor`: probe what this host's kernel offers, and say what dwcp does with each.

    dwcp doctor [--json] [--evidence]

A human run prints a table: each probe, its result (yes/no/unknown and a
detail), and under it what dwcp does with it; ``--evidence`` adds each call
made and what it returned.  ``--json`` prints the document described in
``dwcp.doctor`` (``{"version": 1, "probes": [...]}``).  The exit code is 0
whatever the probes find: a missing feature is an answer, not an error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap

__all__ = ["add_parser", "run", "render_table"]

_NAME_WIDTH = 20
_RESULT_WIDTH = 8
_MAX_WIDTH = 120  # wider lines are hard to read, whatever the terminal


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="probe io_uring, zero-copy, kTLS, NIC queues, buffer sysctls...: what dwcp does with each",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (schema in dwcp.doctor)")
    p.add_argument("--evidence", action="store_true", help="also print each call made and what it returned")


def render_table(probes: list[dict], *, evidence: bool = False, width: int = 100) -> str:
    """The human table from the ``--json`` document's probes."""
    indent = " " * (_NAME_WIDTH + _RESULT_WIDTH)
    body = max(40, width - len(indent))
    lines = [f"{'PROBE':<{_NAME_WIDTH}}{'RESULT':<{_RESULT_WIDTH}}DETAIL / WHAT DWCP DOES"]
    for p in probes:
        detail = textwrap.wrap(p["detail"], body) or [""]
        lines.append(f"{p['name']:<{_NAME_WIDTH - 1}} {p['available']:<{_RESULT_WIDTH}}{detail[0]}")
        lines += [indent + d for d in detail[1:]]
        lines += [indent + d for d in textwrap.wrap("dwcp: " + p["dwcp"], body, subsequent_indent="  ")]
        if evidence:
            for e in p["evidence"]:
                lines += [indent + d for d in textwrap.wrap("$ " + e, body, subsequent_indent="    ")]
    counts = {a: sum(p["available"] == a for p in probes) for a in ("yes", "no", "unknown")}
    lines.append(f"{len(probes)} probes: {counts['yes']} yes, {counts['no']} no, {counts['unknown']} unknown"
                 + ("" if evidence else " (--evidence shows each call and what it returned)"))  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from dwcp.doctor import report, run_probes

    doc = report(run_probes())
    if args.json:
        print(json.dumps(doc))
    else:
        print(
            render_table(
                doc["probes"],
                evidence=args.evidence,
                width=min(_MAX_WIDTH, shutil.get_terminal_size().columns),
            )
        )
    return 0
