"""A draft's weights in int8 (weight-only, `engine/quantize.py`) against its own dtype: what a
draft forward costs between target forwards, and whether it predicts as well.

    python benchmarks/bench_draft_int8.py runs/fresh12/draft --replay runs/sb_regen.jsonl \
        [--samples 186] [--prompts 6] [--max-new-tokens 48] [--reps 3] [--json out.json]

Speed: γ = 1 decoding of Spec-Bench prompts (bf16 target) records every catch-up call the
draft makes — the one forward of a γ = 1 round — then replays each call with both drafts, a
target step before every call (as in decoding, it pushes the draft's weights out of the caches),
the two alternating. Accuracy: chain τ and acc@j of both drafts replayed on the target's own
answers (`acceptance.chain_tau`, fp32 target, every product of the int8 draft in int8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from draftvocab.chat.conversations import read_conversations
from draftvocab.chat.spans import ChatSpans
from draftvocab.engine import quantize
from draftvocab.engine.acceptance import chain_tau, prepare_heldout
from draftvocab.engine.bench import load_questions
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.drafters import aux_layers, load_draft
from draftvocab.engine.target import load_target
from draftvocab.engine.train import encode_conversations


def record_catch_ups(dec: SpeculativeDecoder, prompts, max_new_tokens: int) -> list[tuple]:
    """The arguments of every catch-up call while `dec` decodes `prompts` (copies: the decoder
    grows its caches after the call)."""
    calls = []
    original = dec._catch_up

    def recording(feats, tokens, pending_from, dk, dv):
        calls.append((feats.clone(), list(tokens), pending_from,
                      None if dk is None else dk.clone(), None if dv is None else dv.clone()))
        return original(feats, tokens, pending_from, dk, dv)

    dec._catch_up = recording
    try:
        for p in prompts:
            dec.generate(p, max_new_tokens)
    finally:
        del dec._catch_up
    return calls


@torch.no_grad()
def time_catch_ups(target, decoders: dict, calls, reps: int, prompt) -> dict:
    """Median ms of one catch-up per decoder, split into calls over a few pairs (a round's)
    and over a whole prompt (a request's first); decoders alternate call by call."""
    cache = target.forward(torch.tensor([prompt])).past_key_values
    for dec in decoders.values():
        dec._reset_draft()
    times = {name: {"round": [], "prompt": []} for name in decoders}
    for _ in range(reps):
        for call in calls:
            kind = "round" if call[0].shape[0] <= 2 else "prompt"
            for name, dec in decoders.items():
                target.forward(torch.tensor([[1]]), past=cache)  # evicts the draft's weights
                cache.crop(-1)
                t0 = time.perf_counter()
                dec._catch_up(*call)
                times[name][kind].append(time.perf_counter() - t0)
    return {name: {kind: {"calls": len(ts) // reps, "median_ms": 1e3 * statistics.median(ts)}
                   for kind, ts in kinds.items() if ts}
            for name, kinds in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("draft", type=Path)
    ap.add_argument("--replay", type=Path, required=True,
                    help="the target's answers (JSONL conversations) for chain τ")
    ap.add_argument("--samples", type=int, default=186)
    ap.add_argument("--prompts", type=int, default=6, help="Spec-Bench questions for timing")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gamma", type=int, default=2, help="chain length of the τ replay")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)

    target = load_target("smollm2-135m", layers=aux_layers([args.draft]),
                         dtype=torch.bfloat16)
    drafts = {"bf16": load_draft(args.draft, target, int8=False),
              "int8": load_draft(args.draft, target, int8=True)}
    decoders = {name: SpeculativeDecoder(target, d, tree=False, gamma=1)
                for name, d in drafts.items()}
    qs = load_questions(per_category=max(1, args.prompts // 6), turns=1)[: args.prompts]
    prompts = [target.prompt_ids([{"role": "user", "content": q.turns[0]}]) for q in qs]
    calls = record_catch_ups(decoders["bf16"], prompts, args.max_new_tokens)
    speed = time_catch_ups(target, decoders, calls, args.reps, prompts[0])
    bytes_ = {name: sum(m.weight.numel() * (1 if name == "int8" else m.weight.element_size())
                        for m in d.modules() if type(m) is torch.nn.Linear)
              for name, d in drafts.items()}
    del target, drafts, decoders

    fp32 = load_target("smollm2-135m")
    reader = read_conversations(args.replay, max_samples=args.samples, seed=0)
    examples, _ = encode_conversations(reader, fp32.tokenizer, 1024,
                                       spans=ChatSpans(fp32.tokenizer))
    held = prepare_heldout(fp32, examples)
    accuracy = {"fp32": chain_tau(load_draft(args.draft, fp32, int8=False), held, args.gamma)}
    quantize.MAX_ROWS = 1 << 40  # every product in int8, the replay's batches too
    accuracy["int8"] = chain_tau(load_draft(args.draft, fp32, int8=True), held, args.gamma)

    print(f"{len(calls)} catch-up calls from {len(prompts)} prompts, ×{args.reps}, "
          "a target step before each; median ms")
    print("| draft weights | Linear bytes | catch-up of a round | catch-up of a prompt | "
          f"τ (γ = {args.gamma}) | acc@0 | acc@1 |")
    print("|---|---|---|---|---|---|---|")
    for name, acc_name in (("bf16", "fp32"), ("int8", "int8")):
        s, a = speed[name], accuracy[acc_name]
        print(f"| {name} (replay: {acc_name}) | {bytes_[name] / 2**20:.1f} MiB | "
              f"{s['round']['median_ms']:.2f} | {s.get('prompt', {}).get('median_ms', 0):.2f} | "
              f"{a['tau']:.3f} | {a['acc'][0]:.3f} | {a['acc'][1]:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"speed": speed, "bytes": bytes_,
                                         "accuracy": accuracy}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
