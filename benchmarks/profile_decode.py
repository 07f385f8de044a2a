"""Where decode time goes: per generated token, split into target prefill, target step/verify,
draft catch-up, drafting, KV-cache trimming and the rest (Python bookkeeping, sampling).

Wraps the decoder's pieces with timers (no profiler overhead on the hot path) and runs plain
decoding and each draft on the same Spec-Bench prompts:

    python benchmarks/profile_decode.py --draft trimmed=runs/draft-trimmed \\
        --draft full=runs/draft-full --chain --gamma 2 --prompts 6 --max-new-tokens 64
    python benchmarks/profile_decode.py --dtype bf16 --draft chain=runs/speedup-full/draft \\
        --tree-draft tree=runs/speedup-full/draft --chain --depth 2 --topk 3 --total-tokens 5 \\
        --prompts 12    # chain vs tree of one draft, and each round's cost in plain steps

SpecBlock drafts (detected from their config) use --blocks/--branch/--policy; their drafting
row includes the catch-up, which shares block 1's forward. Rows starting "in drafting" are
parts of the drafting rows (the draft's layers, LM head, rank head), not added to the total.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from draftvocab.engine import decode
from draftvocab.engine.bench import load_questions
from draftvocab.engine.blockdecode import SpecBlockDecoder
from draftvocab.engine.decode import SpeculativeDecoder, decoder_for
from draftvocab.engine.drafters import aux_layers, load_draft
from draftvocab.engine.target import load_target, parse_dtype


def _timed(totals, name, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0
    return wrapper


def profile(target, dec: SpeculativeDecoder, prompts, max_new_tokens: int) -> dict:
    totals: dict[str, float] = defaultdict(float)
    forward = target.forward

    def target_forward(ids, **kw):
        phase = "target prefill" if kw.get("past") is None else (
            "target verify" if ids.shape[1] > 1 else "target step")
        return _timed(totals, phase, forward)(ids, **kw)

    target.forward = target_forward
    originals = {}
    pieces = [("_catch_up", "draft catch-up"), ("_draft_chain", "drafting"),
              ("_draft_tree", "drafting"), ("_draft_tree_sampled", "drafting")]
    if isinstance(dec, SpecBlockDecoder):  # catch-up is inside block 1's forward
        pieces = [("_propose", "drafting (incl. catch-up)")]
    for attr, name in pieces:
        originals[attr] = getattr(dec, attr)
        setattr(dec, attr, _timed(totals, name, originals[attr]))
    inner = {}  # sub-phases of drafting, reported apart and not summed
    if dec.draft is not None:
        for attr in ("run", "step", "logits", "rank_logits"):
            if hasattr(dec.draft, attr):
                inner[attr] = getattr(dec.draft, attr)
                setattr(dec.draft, attr, _timed(totals, f"  in drafting: draft.{attr}",
                                                inner[attr]))
    keep = decode._keep_cache
    decode._keep_cache = _timed(totals, "KV-cache trim", keep)
    tokens = forwards = accepted = 0
    wall = 0.0
    try:
        for p in prompts:
            res = dec.generate(p, max_new_tokens)
            tokens += len(res.tokens)
            forwards += res.target_forwards
            accepted += sum(res.accept_lengths)
            wall += res.seconds
    finally:
        target.forward = forward
        for attr in originals:
            delattr(dec, attr)
        for attr in inner:
            delattr(dec.draft, attr)
        decode._keep_cache = keep
    # Verify-step post-processing (acceptance walk, argmax) sits inside the verify wrapper of
    # the decoder, outside target.forward: it lands in "other" with the loop's own bookkeeping.
    totals["other"] = wall - sum(v for k, v in totals.items() if not k.startswith("  "))
    return {"tokens": tokens, "target_forwards": forwards, "seconds": wall,
            "mean_accept_length": accepted / max(forwards, 1),
            "tok_per_s": tokens / wall,
            "ms_per_token": {k: 1e3 * v / tokens for k, v in totals.items()},
            "ms_per_target_forward": {k: 1e3 * v / max(forwards, 1) for k, v in totals.items()}}


def _round_ms(r: dict) -> float:
    """Wall ms of one round (a target step or verify with its drafting), prefill excluded."""
    per = r["ms_per_target_forward"]
    return 1e3 * r["seconds"] / max(r["target_forwards"], 1) - per.get("target prefill", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--draft", action="append", default=[], help="NAME=DIR (repeatable)")
    ap.add_argument("--tree-draft", action="append", default=[],
                    help="NAME=DIR decoded as the --depth/--topk/--total-tokens tree even with "
                    "--chain, so a chain and a tree profile side by side (repeatable)")
    ap.add_argument("--dtype", default="fp32", help="the target's dtype: fp32 | bf16")
    ap.add_argument("--prompts", type=int, default=6, help="Spec-Bench questions (1 per category)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--chain", action="store_true")
    ap.add_argument("--gamma", type=int, default=2)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--total-tokens", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2, help="SpecBlock drafts")
    ap.add_argument("--branch", type=int, default=4, help="SpecBlock drafts")
    ap.add_argument("--policy", help="SpecBlock drafts: rank | fixed | chain")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()

    specs = [(item, False) for item in args.draft] + [(item, True) for item in args.tree_draft]
    drafts = [item.partition("=")[2] for item, _ in specs]
    target = load_target(args.target, layers=aux_layers(drafts), dtype=parse_dtype(args.dtype))
    qs = load_questions(per_category=max(1, args.prompts // 6), turns=1)[: args.prompts]
    prompts = []
    for q in qs:
        prompts.append(target.prompt_ids([{"role": "user", "content": q.turns[0]}]))
    prompts = [p for p in prompts if len(p) + args.max_new_tokens <= target.max_length]
    variants = {"plain": SpeculativeDecoder(target)}
    for item, tree in specs:
        name, _, path = item.partition("=")
        variants[name] = decoder_for(
            target, load_draft(path, target), tree=tree or not args.chain, gamma=args.gamma,
            depth=args.depth, topk=args.topk, total_tokens=args.total_tokens,
            blocks=args.blocks, branch=args.branch, policy=args.policy)
    torch.manual_seed(0)
    profile(target, variants["plain"], prompts[:1], 8)  # warm-up
    results = {name: profile(target, dec, prompts, args.max_new_tokens)
               for name, dec in variants.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    phases = sorted({k for r in results.values() for k in r["ms_per_token"]},
                    key=lambda k: -max(r["ms_per_token"].get(k, 0) for r in results.values()))
    names = list(results)
    shape = f"tree depth {args.depth}, top-{args.topk}, {args.total_tokens} nodes"
    print(f"{len(prompts)} prompts, {args.max_new_tokens} new tokens, {args.dtype}; "
          f"{'chain γ=' + str(args.gamma) if args.chain else shape}"
          f"{' (--tree-draft: ' + shape + ')' if args.tree_draft else ''}; "
          "ms per generated token")
    print("| phase | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for ph in phases:
        print(f"| {ph} | " + " | ".join(f"{results[n]['ms_per_token'].get(ph, 0):.1f}"
                                        for n in names) + " |")
    print("| **total** | " + " | ".join(f"{1e3 / results[n]['tok_per_s']:.1f}" for n in names)
          + " |")
    print("| tok/s | " + " | ".join(f"{results[n]['tok_per_s']:.1f}" for n in names) + " |")
    plain_step = _round_ms(results["plain"])  # a round's cost in plain decoding's steps
    print("| round cost (plain steps) | " + " | ".join(
        f"{_round_ms(results[n]) / plain_step:.2f}" for n in names) + " |")
    print("| τ (mean accept length) | " + " | ".join(
        f"{results[n]['mean_accept_length']:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
