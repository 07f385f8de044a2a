"""What a k-token verify forward costs against a 1-token step, with the target's Linear layers
computing few-row products as W·xᵀ (`target._few_rows_linear`, the default) and as x·Wᵀ
(`torch.nn.functional.linear`, before), interleaved in one run.

    python benchmarks/bench_verify.py --reps 15

Prints, per way and per k, the median ms of one target forward on a KV cache of the prompt and
its ratio to the 1-token step of the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types

import torch

from draftvocab.engine.target import _few_rows_linear, load_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--ks", default="1,2,3,4,8")
    a = ap.parse_args()
    target = load_target("smollm2-135m")
    linears = [m for m in target.model.modules() if type(m) is torch.nn.Linear]
    prompt = target.prompt_ids([{"role": "user", "content": "Explain how a bicycle works, "
                                 "with examples of gears, brakes and wheels."}])
    n = len(prompt)
    cache = target.forward(torch.tensor([prompt])).past_key_values

    def use(few_rows: bool) -> None:
        for m in linears:
            m.forward = (types.MethodType(_few_rows_linear, m) if few_rows
                         else types.MethodType(torch.nn.Linear.forward, m))

    def once(k: int) -> float:
        ids = torch.arange(100, 100 + k).unsqueeze(0)
        pos = torch.arange(n, n + k).unsqueeze(0)
        t0 = time.perf_counter()
        target.forward(ids, past=cache, position_ids=pos)
        dt = time.perf_counter() - t0
        cache.crop(-k)
        return dt

    ks = [int(k) for k in a.ks.split(",")]
    times: dict[str, dict[int, list[float]]] = {"W·xᵀ": {k: [] for k in ks},
                                                "x·Wᵀ": {k: [] for k in ks}}
    for _ in range(a.reps):
        for way in times:
            use(way == "W·xᵀ")
            for k in ks:
                times[way][k].append(once(k))
    out = {}
    for way, by_k in times.items():
        med = {k: statistics.median(v) * 1e3 for k, v in by_k.items()}
        out[way] = {f"{k} tokens": {"ms": round(med[k], 1), "x_step": round(med[k] / med[1], 2)}
                    for k in ks}
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
