"""Write Spec-Bench questions of some categories as a prompts JSONL for `draftvocab regenerate`,
leaving out the first `--skip` of each category (the ones bench_specblock.py serves), so a
draft can be trained on one category mix and measured on unseen questions.

    python benchmarks/specbench_train_prompts.py --categories translation,math_reasoning,qa \\
        --skip 8 -o runs/shift/mixA-train-prompts.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

from draftvocab.engine.bench import load_questions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--categories", required=True, help="comma-separated Spec-Bench categories")
    ap.add_argument("--skip", type=int, default=8, help="first questions per category left out")
    ap.add_argument("--questions", type=Path, help="Spec-Bench JSONL (default: the bundled one)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()

    wanted = set(args.categories.split(","))
    seen: dict[str, int] = defaultdict(int)
    lines = []
    for q in load_questions(args.questions, turns=1):
        if q.category not in wanted:
            continue
        seen[q.category] += 1
        if seen[q.category] > args.skip:
            # regenerate rewrites assistant turns, so each prompt carries a placeholder one
            lines.append(json.dumps({"id": f"spec_bench:{q.qid}", "messages": [
                {"role": "user", "content": q.turns[0]},
                {"role": "assistant", "content": "-"}]}))
    if missing := wanted - set(seen):
        raise SystemExit(f"no questions in categories: {', '.join(sorted(missing))}")
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"{len(lines)} prompts -> {args.out}")


if __name__ == "__main__":
    main()
