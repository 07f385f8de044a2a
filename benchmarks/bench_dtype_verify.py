"""What a k-row verify forward costs against a plain one-token step, fp32 against bf16, the
way the decoder calls the target (a 4D mask; in bf16 the rows run stepwise, bit-identical to
one-token steps, `stepwise.py`), and bf16 with transformers' masked attention (not exact)
for the price of exactness.

    python benchmarks/bench_dtype_verify.py --reps 10

Prints median ms per forward on a KV cache of the prompt and the ratio to the plain step of
the same dtype.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from draftvocab.engine.target import load_target


def measure(target, ks: list[int], reps: int, stepwise: bool) -> dict[str, float]:
    prompt = target.prompt_ids([{"role": "user", "content": "Explain how a bicycle works, "
                                 "with examples of gears, brakes and wheels."}])
    n = len(prompt)
    cache = target.forward(torch.tensor([prompt])).past_key_values
    target.stepwise = stepwise
    times: dict[str, list[float]] = {"plain": [], **{f"{k} rows": [] for k in ks}}
    low = torch.finfo(target.dtype).min
    for _ in range(reps):
        t0 = time.perf_counter()
        target.forward(torch.tensor([[100]]), past=cache)
        times["plain"].append(time.perf_counter() - t0)
        cache.crop(-1)
        for k in ks:
            mask = torch.zeros(1, 1, k, n + k, dtype=target.dtype)
            mask[..., n:].masked_fill_(~torch.ones(k, k, dtype=torch.bool).tril(), low)
            t0 = time.perf_counter()
            target.forward(torch.arange(100, 100 + k)[None], past=cache,
                           position_ids=torch.arange(n, n + k)[None], attention_mask=mask)
            times[f"{k} rows"].append(time.perf_counter() - t0)
            cache.crop(-k)
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    return {name: f"{ms:.1f} ms ({ms / med['plain']:.2f}x)" for name, ms in med.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--ks", default="1,2,3,4,8,12,16")
    a = ap.parse_args()
    ks = [int(k) for k in a.ks.split(",")]
    out = {}
    fp32 = load_target("smollm2-135m")
    out["fp32"] = measure(fp32, ks, a.reps, stepwise=False)
    del fp32
    bf16 = load_target("smollm2-135m", dtype=torch.bfloat16)
    out["bf16 stepwise (exact)"] = measure(bf16, ks, a.reps, stepwise=True)
    out["bf16 masked SDPA (not exact)"] = measure(bf16, ks, a.reps, stepwise=False)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
