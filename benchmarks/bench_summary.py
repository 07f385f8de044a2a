"""Summarise a `draftvocab bench` report.json again from its per-request rows, with the metrics
the bench reports today (e.g. decode tok/s, after the first token, for a report written before
that column existed). Nothing is re-measured: the same rows, the same variants and runs.

    python benchmarks/bench_summary.py runs/packed12/bench-g1/report.json -o runs/packed12/bench-g1-now
    python benchmarks/bench_summary.py runs/bench/report.json --print   # the table only

Writes report.md, report.json and throughput.png into -o (a new directory, replaced whole).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from draftvocab.engine.bench import markdown, summarise, write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=None)
    ap.add_argument("--print", action="store_true", help="print report.md on stdout")
    a = ap.parse_args()
    if a.out is None and not a.print:
        sys.exit("error: give -o DIR and/or --print")
    old = json.loads(a.report.read_text())
    report = summarise(old["rows"], old["variants"], old["runs"], old["greedy_mismatches"],
                       old["max_new_tokens"])
    # what summarise does not compute (servers, skipped requests) is kept as it was
    report = {**old, **report}
    if a.out is not None:
        write_report(report, a.out)
    if a.print:
        print(markdown(report), end="")


if __name__ == "__main__":
    main()
