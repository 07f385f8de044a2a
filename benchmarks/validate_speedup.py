"""Predicted vs measured tokens/s for drafts of several vocabulary sizes (chain decoding).

Prediction: `draftvocab.engine.latency.predict_speed` from the counts' coverage C(k), a measured
latency model T_draft(k) (`draftvocab latency`) and a calibration (`draftvocab calibrate`: the
per-position acceptance of a full-vocabulary draft and the target's verify time). Measurement:
the Spec-Bench benchmark, all drafts and plain decoding interleaved per request, `--runs` runs.

    python benchmarks/validate_speedup.py --counts runs/smol-vocab/counts.safetensors \\
        --latency runs/latency/latency.json --calibration runs/calibration.json \\
        --draft runs/draft-k3426 --draft runs/draft-k6851 --draft runs/draft-k13702 \\
        --draft runs/draft-kfull --out runs/validate
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from draftvocab.analysis.plots import plot_speed
from draftvocab.core.atomic import atomic_directory
from draftvocab.engine.bench import load_questions, run_benchmark
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.drafters import aux_layers, load_draft, read_config
from draftvocab.engine.latency import LatencyModel, predict_speed
from draftvocab.engine.target import load_target
from draftvocab.vocab.counts import TokenCounts
from draftvocab.vocab.objective import coverage_curve


def _ranks(x) -> np.ndarray:
    return np.argsort(np.argsort(-np.asarray(x)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--counts", type=Path, required=True)
    ap.add_argument("--latency", type=Path, required=True)
    ap.add_argument("--calibration", type=Path, required=True)
    ap.add_argument("--draft", action="append", type=Path, required=True)
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--per-category", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("validate"))
    args = ap.parse_args()

    counts = TokenCounts.load(args.counts).counts
    coverage = coverage_curve(counts)
    model = LatencyModel.from_json(json.loads(args.latency.read_text()))
    cal = json.loads(args.calibration.read_text())
    gamma = cal["gamma"]
    ks = np.arange(1, counts.size + 1)
    pred = predict_speed(coverage[1:], model(ks), cal["t_verify_seconds"], cal["alphas"],
                         float(coverage[cal["draft_vocab_size"]]),
                         cal.get("prefill_seconds_per_token", 0.0))

    target = load_target(args.target, layers=aux_layers(args.draft))
    variants = {"plain": SpeculativeDecoder(target)}
    sizes = {}
    for path in args.draft:
        k = read_config(path).draft_vocab_size
        sizes[f"k={k}"] = k
        variants[f"k={k}"] = SpeculativeDecoder(target, load_draft(path, target), tree=False,
                                                gamma=gamma)
    questions = load_questions(per_category=args.per_category, turns=1)
    report = run_benchmark(target, variants, questions, max_new_tokens=args.max_new_tokens,
                           runs=args.runs)
    overall = report["table"]["overall"]
    rows = []
    for name, k in sizes.items():
        measured, ci = overall[name]["tokens_per_s"]
        tau, _ = overall[name]["accept_length"]
        p = float(pred["tokens_per_s"][k - 1])
        rows.append({"k": k, "coverage": float(coverage[k]), "predicted_tokens_per_s": p,
                     "measured_tokens_per_s": measured, "ci95": ci,
                     "predicted_tau": float(pred["tau"][k - 1]), "measured_tau": tau,
                     "error": p / measured - 1})
    same_order = bool((_ranks([r["predicted_tokens_per_s"] for r in rows])
                       == _ranks([r["measured_tokens_per_s"] for r in rows])).all())
    k_best = int(ks[np.argmax(pred["tokens_per_s"])])
    result = {"rows": rows, "ranking_correct": same_order, "predicted_k_star": k_best,
              "plain_tokens_per_s": overall["plain"]["tokens_per_s"][0],
              "greedy_mismatches": report["greedy_mismatches"], "calibration": cal,
              "questions": len(questions), "runs": args.runs}
    grid = np.unique(np.geomspace(1, counts.size, 2000).astype(int))
    head = ("| k | C(k) | predicted tok/s | measured tok/s (95 % CI) | error | predicted τ | "
            "measured τ |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['k']:,} | {r['coverage']:.3f} | {r['predicted_tokens_per_s']:.1f} | "
              f"{r['measured_tokens_per_s']:.1f} ± {r['ci95']:.1f} | {r['error']:+.1%} | "
              f"{r['predicted_tau']:.3f} | {r['measured_tau']:.3f} |" for r in rows]
    lines.append(f"\nplain decoding {result['plain_tokens_per_s']:.1f} tok/s; ranking correct: "
                 f"{same_order}; predicted k* = {k_best:,}")
    with atomic_directory(args.out) as tmp:
        (tmp / "validate.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "validate.md").write_text("\n".join(lines) + "\n")
        plot_speed(grid, pred["tokens_per_s"][grid - 1], k_best, tmp / "speed.png",
                   measured=[(r["k"], r["measured_tokens_per_s"], r["ci95"]) for r in rows],
                   plain=result["plain_tokens_per_s"])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
