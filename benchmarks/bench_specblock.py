"""SpecBlock vs EAGLE-3 on Spec-Bench, with an ablation of each mechanism and a distribution
shift for the bandit — one interleaved run, every variant on every request (order rotated).

Variants: plain target decoding; the EAGLE-3 draft; SpecBlock (rank-head policy); the
ablations (drafts trained without the layer-wise shift / cross-block inheritance / valid-prefix
mask, given with --ablation; the full draft limited to one block per round, i.e. no path
extended across blocks; the full draft with a fixed top-`branch` tree instead of the rank
head); SpecBlock with
the cost-aware bandit; and SpecBlock at each fixed bandit arm (blocks, branch) for the shift
experiment. Questions of mix A are served first, then mix B, so the bandit (one instance for
the whole stream) sees the shift; "static" is the arm with the best tok/s on mix A, served on
mix B. With --shift-only the run is just that experiment (plain, the arms and the bandit), for
a draft trained on mix A's answers:

    python benchmarks/bench_specblock.py --shift-only --specblock runs/shift/sb-mixA \\
        --mix-a translation,math_reasoning,qa --per-category 4 --out runs/shift/bench

    python benchmarks/bench_specblock.py --eagle runs/draft-k6851 --specblock runs/sb/full \\
        --ablation no-shift=runs/sb/no-shift --ablation no-inherit=runs/sb/no-inherit \\
        --ablation no-valid-prefix=runs/sb/no-vpm --per-category 2 --out runs/sb/bench

Writes report.md / report.json / throughput.png (bench.write_report) plus specblock.md and
specblock.json (paper-claim ratios, ablation and shift tables) to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from draftvocab.engine.bandit import DEFAULT_ARMS, BudgetBandit
from draftvocab.engine.bench import load_questions, markdown, mean_ci, run_benchmark, write_report
from draftvocab.engine.blockdecode import SpecBlockDecoder
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.drafters import aux_layers, load_draft
from draftvocab.engine.target import load_target

MIX_A = ("translation", "summarization", "rag")


def per_mix(rows, names, categories) -> dict[str, dict[str, tuple[float, float]]]:
    """tok/s (mean ± CI over runs) and drafter seconds per token per variant, over `categories`."""
    out = {}
    for name in names:
        agg = defaultdict(lambda: defaultdict(float))
        for r in rows:
            if r["variant"] == name and r["category"] in categories:
                a = agg[r["run"]]
                for key in ("tokens", "seconds", "draft_seconds", "target_forwards",
                            "draft_forwards", "accepted"):
                    a[key] += r[key]
        runs = agg.values()
        out[name] = {
            "tokens_per_s": mean_ci([a["tokens"] / a["seconds"] for a in runs]),
            "draft_ms_per_token": mean_ci([1e3 * a["draft_seconds"] / a["tokens"] for a in runs]),
            "draft_ms_per_round": mean_ci([1e3 * a["draft_seconds"] / a["target_forwards"]
                                           for a in runs]),
            "accept_length": mean_ci([a["accepted"] / a["target_forwards"] for a in runs]),
            "draft_forwards_per_token": mean_ci([a["draft_forwards"] / a["tokens"]
                                                 for a in runs]),
        }
    return out


def arm_share_by_mix(bandit, marks, questions, mix_a, runs) -> dict[str, dict[str, float]]:
    """The bandit's share of rounds per arm while serving each mix. `marks[i]` is its round
    count after the i-th request; requests go run by run through `questions`."""
    if len(marks) != runs * len(questions):
        return {}  # several turns or a skipped request: the request -> question map is lost
    counts = {"A": defaultdict(int), "B": defaultdict(int)}
    start = 0
    for i, end in enumerate(marks):
        mix = "A" if questions[i % len(questions)].category in mix_a else "B"
        for arm in bandit.history[start:end]:
            counts[mix][arm] += 1
        start = end
    return {mix: {f"blocks={b},branch={w}": c[a] / max(sum(c.values()), 1)
                  for a, (b, w) in enumerate(bandit.arms)} for mix, c in counts.items()}


def fmt(v, digits=1):
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--eagle", help="EAGLE-3 draft dir (same vocabulary)")
    ap.add_argument("--eagle-gamma", type=int, default=2, help="EAGLE-3 chain length")
    ap.add_argument("--specblock", required=True, help="full SpecBlock draft dir")
    ap.add_argument("--ablation", action="append", default=[], help="NAME=DIR (repeatable)")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--branch", type=int, default=4)
    ap.add_argument("--total-tokens", type=int, default=16)
    ap.add_argument("--arms", default=",".join(f"{b}x{w}" for b, w in DEFAULT_ARMS),
                    help="bandit arms BLOCKSxBRANCH, comma-separated")
    ap.add_argument("--no-arms", action="store_true", help="skip the fixed-arm variants")
    ap.add_argument("--shift-only", action="store_true",
                    help="only plain, the fixed arms and the bandit (no EAGLE-3, no ablations)")
    ap.add_argument("--mix-a", default=",".join(MIX_A),
                    help="categories served first (the mix the static budget is tuned on)")
    ap.add_argument("--questions", type=Path)
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--turns", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("specblock-bench"))
    args = ap.parse_args()
    if args.shift_only and (args.no_arms or args.ablation):
        ap.error("--shift-only runs the arms and no ablations")
    if not args.shift_only and not args.eagle:
        ap.error("--eagle is required unless --shift-only")

    ablations = [item.partition("=")[::2] for item in args.ablation]
    dirs = [d for d in (args.eagle, args.specblock, *(p for _, p in ablations)) if d]
    target = load_target(args.target, layers=aux_layers(dirs))
    block = load_draft(args.specblock, target)
    sb = {"blocks": args.blocks, "branch": args.branch, "total_tokens": args.total_tokens}
    variants = {"plain": SpeculativeDecoder(target)}
    if not args.shift_only:
        eagle = load_draft(args.eagle, target)
        variants["eagle3"] = SpeculativeDecoder(target, eagle, tree=False, gamma=args.eagle_gamma)
        variants["specblock"] = SpecBlockDecoder(target, block, policy="rank", **sb)
        for name, path in ablations:
            variants[f"-{name}"] = SpecBlockDecoder(target, load_draft(path, target),
                                                    policy="rank", **sb)
        if args.blocks > 1:  # inheritance is what lets a block extend a drafted path
            variants["-cross-block"] = SpecBlockDecoder(target, block, policy="rank",
                                                        **{**sb, "blocks": 1})
        variants["-rank-head"] = SpecBlockDecoder(target, block, policy="fixed", **sb)
    arm_list = tuple(tuple(int(x) for x in a.split("x")) for a in args.arms.split(","))
    bandit = BudgetBandit(arms=arm_list)
    variants["+bandit"] = SpecBlockDecoder(target, block, policy="rank", bandit=bandit, **sb)
    arms = {}
    if not args.no_arms:
        for blocks, branch in arm_list:
            name = f"arm{blocks}x{branch}"
            arms[name] = (blocks, branch)
            variants[name] = SpecBlockDecoder(target, block, policy="rank", blocks=blocks,
                                              branch=branch, total_tokens=args.total_tokens)

    questions = load_questions(args.questions, per_category=args.per_category, turns=args.turns)
    mix_a = set(args.mix_a.split(","))
    if not mix_a & {q.category for q in questions}:
        ap.error(f"no questions in --mix-a {args.mix_a}")
    questions.sort(key=lambda q: q.category not in mix_a)  # mix A first, then B (stable)
    mix_b = {q.category for q in questions} - mix_a
    # The bandit's round count after each request (in serving order), for its arm use per mix.
    marks: list[int] = []
    t0 = time.perf_counter()
    report = run_benchmark(target, variants, questions, max_new_tokens=args.max_new_tokens,
                           runs=args.runs, progress=lambda _: marks.append(len(bandit.history)))
    report["wall_seconds"] = time.perf_counter() - t0
    write_report(report, args.out)

    names = list(variants)
    rows = report["rows"]
    allcats = mix_a | mix_b
    overall = per_mix(rows, names, allcats)
    claims = {}
    if not args.shift_only:
        e, s = overall["eagle3"], overall["specblock"]
        claims = {
            "draft_cost_per_round_vs_eagle3": s["draft_ms_per_round"][0]
            / e["draft_ms_per_round"][0],
            "draft_cost_per_token_vs_eagle3": s["draft_ms_per_token"][0]
            / e["draft_ms_per_token"][0],
            "speedup_vs_eagle3": s["tokens_per_s"][0] / e["tokens_per_s"][0] - 1,
            "bandit_speedup_vs_eagle3": overall["+bandit"]["tokens_per_s"][0]
            / e["tokens_per_s"][0] - 1,
        }
    a_stats, b_stats = per_mix(rows, names, mix_a), per_mix(rows, names, mix_b)
    shift = {}
    if arms:
        static = max(arms, key=lambda n: a_stats[n]["tokens_per_s"][0])
        oracle = max(arms, key=lambda n: b_stats[n]["tokens_per_s"][0])
        shift = {"mix_a": sorted(mix_a), "mix_b": sorted(mix_b), "static_arm": static,
                 "best_arm_on_b": oracle,
                 "static_on_b": b_stats[static]["tokens_per_s"],
                 "bandit_on_b": b_stats["+bandit"]["tokens_per_s"],
                 "best_on_b": b_stats[oracle]["tokens_per_s"],
                 "bandit_arm_share": bandit.summary(),
                 "bandit_arm_share_by_mix": arm_share_by_mix(bandit, marks, questions, mix_a,
                                                             args.runs)}

    title = "SpecBlock budgets under a shift" if args.shift_only else "SpecBlock vs EAGLE-3"
    lines = [f"## {title}", "",
             (f"{args.runs} runs × {len(questions)} questions, {args.max_new_tokens} new tokens, "
             "mean ± 95 % CI; drafter ms are wall time of the drafting calls."), "",
             "| variant | tok/s | τ | drafter fwd/token | drafter ms/round | drafter ms/token |",
             "|---|---|---|---|---|---|"]
    for name in names:
        st = overall[name]
        lines.append(f"| {name} | {fmt(st['tokens_per_s'])} | {fmt(st['accept_length'], 2)} | "
                     f"{st['draft_forwards_per_token'][0]:.2f} | "
                     f"{fmt(st['draft_ms_per_round'], 2)} | {fmt(st['draft_ms_per_token'], 2)} |")
    if claims:
        lines += ["", "Paper's claims, measured: "
                  + ", ".join(f"{k} = {v:+.1%}" if "speedup" in k else f"{k} = {v:.0%}"
                              for k, v in claims.items())]
    if shift:
        lines += ["", (f"### Shift: static budget tuned on {', '.join(sorted(mix_a))}, served on "
                  f"{', '.join(sorted(mix_b))}"), "",
                  "| variant | mix A tok/s | mix A τ | mix B tok/s | mix B τ |",
                  "|---|---|---|---|---|"]
        for name in ["plain", *arms, "+bandit"]:
            a, b = a_stats[name], b_stats[name]
            lines.append(f"| {name} | {fmt(a['tokens_per_s'])} | {fmt(a['accept_length'], 2)} | "
                         f"{fmt(b['tokens_per_s'])} | {fmt(b['accept_length'], 2)} |")
        lines += ["", f"static arm (best on A) = {shift['static_arm']}, best on B = "
                  f"{shift['best_arm_on_b']}; bandit's rounds per arm: "
                  + ", ".join(f"{k} {v:.0%}" for k, v in shift["bandit_arm_share"].items())]
        for mix, share in shift["bandit_arm_share_by_mix"].items():
            lines.append(f"- on mix {mix}: "
                         + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    text = "\n".join(lines) + "\n"
    (args.out / "specblock.md").write_text(text)
    (args.out / "specblock.json").write_text(json.dumps(
        {"overall": overall, "mix_a": a_stats, "mix_b": b_stats, "claims": claims,
         "shift": shift}, indent=2))
    print(markdown(report))
    print(text)
    print(f"report -> {args.out}")


if __name__ == "__main__":
    main()
