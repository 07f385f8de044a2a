"""Replay a measured SpecBlock shift benchmark to tune the budget bandit without a GPU-hour.

bench_specblock.py measures, per fixed arm and category, the accept length τ and the seconds
per verify round. This script serves the same request stream (mix A's categories, then mix
B's, `--runs` times) to a BudgetBandit in simulation: each round's gained tokens are 1 + a
truncated geometric draw with the measured mean, its seconds the measured mean with 10 %
log-normal noise. It prints the bandit's tok/s per mix against every fixed arm's, for the
measured costs and for a synthetic shift in which branching is cheap on mix A only (so the
best arm changes at the shift, which the bandit must follow). Seeds are averaged.

    python benchmarks/sim_bandit.py runs/shift/bench/report.json \\
        --mix-a translation,math_reasoning,qa --explore 0.5,0.2,0.1,0.05 --discount 0.98,0.995
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections import defaultdict
from pathlib import Path

from draftvocab.engine.bandit import BudgetBandit

TOKENS = 64  # new tokens per request, as in the benchmark


def arm_stats(report: dict) -> dict[tuple[tuple[int, int], str], tuple[float, float]]:
    """(arm, category) -> (τ, seconds per round) from the fixed-arm rows of a bench report."""
    agg = defaultdict(lambda: defaultdict(float))
    for row in report["rows"]:
        if row["variant"].startswith("arm"):
            blocks, branch = (int(x) for x in row["variant"][3:].split("x"))
            a = agg[((blocks, branch), row["category"])]
            for key in ("seconds", "target_forwards", "accepted"):
                a[key] += row[key]
    if not agg:
        raise SystemExit("no fixed-arm rows (armBxW variants) in this report")
    return {k: (a["accepted"] / a["target_forwards"], a["seconds"] / a["target_forwards"])
            for k, a in agg.items()}


def geometric_q(tau: float, depth: int = 4) -> float:
    """q with sum_{k=1..depth} q^k = τ − 1: a round accepts k more tokens with P(≥ k) = q^k."""
    lo, hi = 0.0, 0.9999
    for _ in range(50):
        q = (lo + hi) / 2
        lo, hi = (q, hi) if sum(q**k for k in range(1, depth + 1)) < tau - 1 else (lo, q)
    return lo


def serve(policy, stats, stream, rng) -> dict[str, float]:
    """tok/s per mix; `policy` is a BudgetBandit or a fixed arm index."""
    arms = sorted({arm for arm, _ in stats})
    q = {k: geometric_q(tau) for k, (tau, _) in stats.items()}
    totals = defaultdict(lambda: [0, 0.0])
    for mix, cat in stream:
        left = TOKENS
        while left > 0:
            i = policy.select() if isinstance(policy, BudgetBandit) else policy
            key = (arms[i], cat)
            extra = 0
            while extra < 4 and rng.random() < q[key]:
                extra += 1
            tokens = min(1 + extra, left)
            seconds = stats[key][1] * math.exp(rng.gauss(0.0, 0.1))
            if isinstance(policy, BudgetBandit):
                policy.update(i, tokens, seconds)
            totals[mix][0] += tokens
            totals[mix][1] += seconds
            left -= tokens
    return {mix: t / s for mix, (t, s) in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("report", type=Path, help="report.json of bench_specblock.py (with arms)")
    ap.add_argument("--mix-a", default="translation,summarization,rag")
    ap.add_argument("--per-category", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--explore", default="0.5,0.2,0.1,0.05")
    ap.add_argument("--discount", default="0.98,0.995")
    ap.add_argument("--cheap-branch", type=float, default=0.72,
                    help="synthetic shift: branching arms' round time × this on mix A")
    args = ap.parse_args()

    measured = arm_stats(json.loads(args.report.read_text()))
    arms = sorted({arm for arm, _ in measured})
    cats = sorted({cat for _, cat in measured})
    mix_a = [c for c in cats if c in args.mix_a.split(",")]
    mix_b = [c for c in cats if c not in mix_a]
    stream = [(m, c) for _ in range(args.runs) for m, mc in (("A", mix_a), ("B", mix_b))
              for c in mc for _ in range(args.per_category)]
    shifted = {(arm, cat): (tau, sec * (args.cheap_branch if cat in mix_a and arm[1] > 1 else 1))
               for (arm, cat), (tau, sec) in measured.items()}

    def mean_over_seeds(make):
        out = [serve(make(), stats, stream, random.Random(seed)) for seed in range(args.seeds)]
        return {m: statistics.fmean(o[m] for o in out) for m in ("A", "B")}

    for label, stats in (("measured costs", measured), ("synthetic shift", shifted)):
        print(f"## {label}  (mix A = {', '.join(mix_a)}; mix B = {', '.join(mix_b)})")
        print("| policy | mix A tok/s | mix B tok/s |\n|---|---|---|")
        for i, (blocks, branch) in enumerate(arms):
            r = mean_over_seeds(lambda i=i: i)
            print(f"| arm {blocks}x{branch} | {r['A']:.1f} | {r['B']:.1f} |")
        for d in (float(x) for x in args.discount.split(",")):
            for e in (float(x) for x in args.explore.split(",")):
                r = mean_over_seeds(lambda d=d, e=e: BudgetBandit(arms=tuple(arms), discount=d,
                                                                  explore=e))
                print(f"| bandit discount {d} explore {e} | {r['A']:.1f} | {r['B']:.1f} |")
        print()


if __name__ == "__main__":
    main()
