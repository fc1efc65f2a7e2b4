"""Print line and branch coverage per dwcp package from the data `make coverage` collected.

A package is the first path component under dwcp/ (``storage.py`` and the
other top-level modules count as themselves).  Run after the pytest passes
with ``--cov``; reads ``.coverage`` in the current directory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import defaultdict


def main() -> int:
    import coverage

    cov = coverage.Coverage()
    cov.load()
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "coverage.json")
        cov.json_report(outfile=out)
        with open(out) as f:
            files = json.load(f)["files"]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # statements, covered, branches, covered
    for path, data in files.items():
        parts = path.split(os.sep)
        i = parts.index("dwcp") if "dwcp" in parts else 0
        pkg = parts[i + 1] if len(parts) > i + 2 else parts[-1].removesuffix(".py")
        s = data["summary"]
        for k, name in enumerate(("num_statements", "covered_lines", "num_branches", "covered_branches")):
            totals[pkg][k] += s.get(name, 0)
            totals["(all)"][k] += s.get(name, 0)
    print(f"{'package':<14}{'lines':>9}{'branches':>10}")
    for pkg in sorted(totals, key=lambda p: (p == "(all)", p)):
        st, sc, br, bc = totals[pkg]
        print(f"{pkg:<14}{100 * sc / st if st else 100:8.1f}%{100 * bc / br if br else 100:9.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
