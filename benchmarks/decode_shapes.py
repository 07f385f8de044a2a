"""Which draft shape pays on this CPU: plain vs chains vs trees of an EAGLE-3 draft, in fp32
and bf16, on Spec-Bench questions the README's bench does not use (tuning, not the result).

    python benchmarks/decode_shapes.py --draft runs/speedup/draft --dtype bf16

Prints one JSON line per shape: tok/s, speed-up over plain in the same run, τ, and whether the
greedy output equals plain decoding's on every request. Shapes are interleaved per request.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from draftvocab.engine.bench import load_questions
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.drafters import aux_layers, load_draft
from draftvocab.engine.target import load_target, parse_dtype

SHAPES = {  # name: SpeculativeDecoder options
    "chain1": {"tree": False, "gamma": 1}, "chain2": {"tree": False, "gamma": 2},
    "chain3": {"tree": False, "gamma": 3},
    "chain2-adaptive4": {"tree": False, "gamma": 4, "adaptive": True},
    "tree3x4x8": {"tree": True, "depth": 3, "topk": 4, "total_tokens": 8},
    "tree4x4x12": {"tree": True, "depth": 4, "topk": 4, "total_tokens": 12},
    "tree5x6x16": {"tree": True, "depth": 5, "topk": 6, "total_tokens": 16},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draft", required=True)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--skip", type=int, default=10, help="questions skipped per category")
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    a = ap.parse_args()
    target = load_target("smollm2-135m", dtype=parse_dtype(a.dtype),
                         layers=aux_layers([a.draft]))
    draft = load_draft(a.draft, target)
    decoders = {"plain": SpeculativeDecoder(target)}
    decoders |= {s: SpeculativeDecoder(target, draft, **SHAPES[s]) for s in a.shapes.split(",")}
    qs = load_questions(None, per_category=a.skip + a.per_category, turns=1)
    by_cat = defaultdict(list)
    for q in qs:
        by_cat[q.category].append(q)
    qs = [q for group in by_cat.values() for q in group[a.skip:]]
    secs, toks, fwd, gained, same = (defaultdict(float), defaultdict(int), defaultdict(int),
                                     defaultdict(int),
                             defaultdict(lambda: True))
    warm = target.prompt_ids([{"role": "user", "content": qs[0].turns[0]}])
    for dec in decoders.values():  # first calls build kernels for each new shape
        dec.generate(warm, 16)
    for q in qs:
        prompt = target.prompt_ids([{"role": "user", "content": q.turns[0]}])
        ref = None
        for name, dec in decoders.items():
            t0 = time.perf_counter()
            res = dec.generate(prompt, a.max_new_tokens)
            secs[name] += time.perf_counter() - t0
            toks[name] += len(res.tokens)
            gained[name] += sum(res.accept_lengths)
            fwd[name] += len(res.accept_lengths)
            ref = res.tokens if ref is None else ref
            same[name] &= res.tokens == ref
    base = toks["plain"] / secs["plain"]
    for name in decoders:
        rate = toks[name] / secs[name]
        print(json.dumps({"shape": name, "dtype": a.dtype, "tok_s": round(rate, 2),
                          "speedup": round(rate / base, 3),
                          "tau": round(gained[name] / max(fwd[name], 1), 3),
                          "identical": same[name], "requests": len(qs)}), flush=True)


if __name__ == "__main__":
    main()
