"""Training speed, side by side in one run: seconds per optimizer step of EAGLE-3 training with
(a) a target forward every step and LM-head logits at every position (the old loop),
(b) a target forward every step, logits only where the loss looks (`ttt_forward(rows=...)`),
(c) cached fp16 features (`train --cache-features`) and logits only where the loss looks,
(d) as (c), with the draft under bf16 autocast (`train --dtype bf16`).
Rounds alternate (a, b, c, d, a, b, ...) so machine drift hits all of them alike.

    python benchmarks/bench_train.py runs/speedup/train.jsonl --mapping runs/smol-vocab \\
        --examples 64 --steps 6 --rounds 3 [--loops c,d]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from draftvocab.chat.conversations import read_conversations
from draftvocab.engine.drafters import eagle3 as eagle3_module
from draftvocab.engine.features import build_features
from draftvocab.engine.target import load_target
from draftvocab.engine.train import TrainConfig, encode_conversations, mapping_tensors, train_draft
from draftvocab.vocab.mapping import load_mapping


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--mapping", type=Path, required=True)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--ttt-steps", type=int, default=3)
    ap.add_argument("--loops", default="a,b,c,d", help="which of the loops to time")
    args = ap.parse_args()

    target = load_target("smollm2-135m")
    d2t, t2d = mapping_tensors(load_mapping(args.mapping), target.vocab_size)
    examples, _ = encode_conversations(
        read_conversations(args.data, max_samples=args.examples, seed=0), target.tokenizer,
        args.max_len)
    config = TrainConfig(ttt_steps=args.ttt_steps, batch_size=4, lr=1e-3, max_len=args.max_len,
                         max_steps=args.steps, warmup_steps=1)
    full_rows = eagle3_module.ttt_forward

    def all_positions(*a, rows=None, **k):  # the old loop: logits at every position
        return full_rows(*a, **k)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = build_features(target, examples, Path(tmp) / "features")
        build = time.perf_counter() - t0
        loops = {"a": "a: live, all positions", "b": "b: live, loss positions",
                 "c": "c: cached, loss positions", "d": "d: cached, loss positions, bf16"}
        times: dict[str, list[float]] = {loops[x]: [] for x in args.loops.split(",")}
        for r in range(args.rounds):
            for name, values in times.items():
                eagle3_module.ttt_forward = all_positions if name.startswith("a") else full_rows
                res = train_draft(target, examples, Path(tmp) / f"{r}-{name[0]}", d2t=d2t,
                                  t2d=t2d, config=replace(config, dtype="bf16" if
                                                           name.startswith("d") else "fp32"),
                                  features=cache if name[0] in "cd" else None)
                values.append(res.seconds_per_step)
        eagle3_module.ttt_forward = full_rows
    tokens = sum(len(e.ids) for e in examples) / len(examples)
    print(f"{len(examples)} examples, {tokens:.0f} tokens each on average, batch 4, "
          f"TTT {args.ttt_steps}, {torch.get_num_threads()} threads; feature cache built in "
          f"{build:.1f} s")
    base = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:28s} {med:6.2f} s/step (median of {len(values)})  {base / med:5.2f}x")


if __name__ == "__main__":
    main()
