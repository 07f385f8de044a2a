"""What a k-token forward costs against a 1-token step on a KV cache, with the target's bf16
Linear layers on oneDNN's prepacked weights (`rowforms.py`, the default) and on `F.linear`
(before), interleaved in one run; and whether both give the same logits, bit for bit.

    python benchmarks/bench_verify.py --reps 15
    python benchmarks/bench_verify.py --ks 1,3,512 --dtype bf16 --reps 5   # + a 512-token prefill

Prints JSON: per way and per k, the median ms of one forward and its ratio to the 1-token step
of the same way, the packed/F.linear speed ratio per k, and `identical` (every logit equal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from draftvocab.engine.rowforms import packing
from draftvocab.engine.target import load_target, parse_dtype


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--ks", default="1,2,3,4,8")
    ap.add_argument("--dtype", default="bf16", help="bf16 (packing applies) or fp32 (it does not)")
    a = ap.parse_args()
    target = load_target("smollm2-135m", dtype=parse_dtype(a.dtype))
    prompt = target.prompt_ids([{"role": "user", "content": "Explain how a bicycle works, "
                                 "with examples of gears, brakes and wheels."}])
    n = len(prompt)
    cache = target.forward(torch.tensor([prompt])).past_key_values

    def once(k: int) -> tuple[float, torch.Tensor]:
        ids = (torch.arange(k) % 900 + 100).unsqueeze(0)
        pos = torch.arange(n, n + k).unsqueeze(0)
        t0 = time.perf_counter()
        logits = target.forward(ids, past=cache, position_ids=pos).logits
        dt = time.perf_counter() - t0
        cache.crop(-k)
        return dt, logits

    ks = [int(k) for k in a.ks.split(",")]
    ways = {"packed": True, "F.linear": False}
    times: dict[str, dict[int, list[float]]] = {w: {k: [] for k in ks} for w in ways}
    last: dict[str, dict[int, torch.Tensor]] = {w: {} for w in ways}
    for rep in range(a.reps + 1):  # the first round warms up (and packs) and is not counted
        for way, enabled in ways.items():
            with packing(enabled):
                for k in ks:
                    dt, logits = once(k)
                    if rep:
                        times[way][k].append(dt)
                    last[way][k] = logits
    out: dict = {"dtype": a.dtype, "cached_tokens": n, "reps": a.reps}
    med = {w: {k: statistics.median(v) * 1e3 for k, v in by_k.items()}
           for w, by_k in times.items()}
    for way in ways:
        out[way] = {f"{k} tokens": {"ms": round(med[way][k], 1),
                                    "x_step": round(med[way][k] / med[way][ks[0]], 2)}
                    for k in ks}
    out["F.linear / packed"] = {f"{k} tokens": round(med["F.linear"][k] / med["packed"][k], 2)
                                for k in ks}
    out["identical"] = all(torch.equal(last["packed"][k], last["F.linear"][k]) for k in ks)
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
