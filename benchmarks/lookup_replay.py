"""Prompt-lookup settings replayed over the target's own greedy answers, no model needed:
per (n-gram sizes, tokens per round), how often the context offers a continuation, how many
copied tokens the target would accept, τ over all rounds (rounds without a match are plain
steps), and the speed-up that implies at measured verify costs.

    python benchmarks/lookup_replay.py runs/speedup/regen.jsonl \
        --costs 1.05,1.13,1.44,1.50      # verify of 2, 3, 4, 5 rows in plain steps

`--costs` comes from `python benchmarks/bench_dtype_verify.py` on the same machine. Greedy
decoding with lookup rounds gives exactly these answers (lossless), so replaying them is the
acceptance the decoder will see; the speed-up ignores Python per round (a few %).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from draftvocab.engine.lookup import lookup
from draftvocab.engine.target import load_target_tokenizer


def replay(pairs, *, max_ngram: int, min_ngram: int, num: int, costs: list[float]):
    rounds = matched = tokens = 0
    seconds = 0.0  # in plain steps
    for prompt, answer in pairs:
        ctx, i = list(prompt), 0
        while i < len(answer):
            copied = lookup(ctx, max_ngram=max_ngram, min_ngram=min_ngram, num=num)
            take = 0
            while take < len(copied) and i + take < len(answer) and \
                    copied[take] == answer[i + take]:
                take += 1
            gained = min(take + 1, len(answer) - i)
            rounds += 1
            matched += bool(copied)
            tokens += gained
            seconds += costs[len(copied) - 1] if copied else 1.0
            ctx += answer[i:i + gained]
            i += gained
    return {"max_ngram": max_ngram, "min_ngram": min_ngram, "tokens": num,
            "match_rate": round(matched / rounds, 3), "tau": round(tokens / rounds, 3),
            "speedup_est": round(tokens / seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("regen", help="`draftvocab regenerate` output (messages + token_ids)")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--costs", default="1.05,1.13,1.44,1.50,1.55,1.60,1.65,1.70",
                    help="verify cost of 2, 3, ... rows in plain steps")
    ap.add_argument("--tokens", default="1,2,3,4,6,8")
    args = ap.parse_args()
    tok = load_target_tokenizer(args.target)
    costs = [float(c) for c in args.costs.split(",")]
    pairs = []
    for line in Path(args.regen).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        answer = r["messages"][-1].get("token_ids")
        if not answer:
            continue
        prompt = tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True,
                                         tokenize=True)
        prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        pairs.append((list(prompt), list(answer)))
    print(f"# {len(pairs)} answers, {sum(len(a) for _, a in pairs):,} tokens")
    for lo, hi in [(1, 3), (2, 3), (2, 4), (3, 4)]:
        for num in [int(n) for n in args.tokens.split(",")]:
            if num <= len(costs):
                print(json.dumps(replay(pairs, max_ngram=hi, min_ngram=lo, num=num,
                                        costs=costs)))


if __name__ == "__main__":
    main()
