"""What a one-token step and a verify forward cost with the target's KV cache in `SlabLayer`s
(now: appended in place, chain rows padded to a `BUCKET` multiple and attended in one call)
against transformers' `DynamicCache` (before: the cache concatenated anew every forward, every
verify row its own attention call), interleaved in one run on the real bf16 target.

    python benchmarks/bench_slab.py --lengths 150,600,1500,3000 --reps 14

Per cache length and cache kind, the median ms of: a one-token step (`step`), `verify` of the
pending token alone (`verify 1`), chain verifies of 2–4 rows, and a depth-1 tree of 3 siblings
(4 rows: the siblings still attend one call each); with each one's ratio to the DynamicCache's
own step. Printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import DynamicCache

from draftvocab.engine.target import load_target
from draftvocab.engine.verify import DraftNode, verify

SHAPES = {"verify 1": [],
          "chain 2": [DraftNode(11, -1, 1)],
          "chain 3": [DraftNode(11, -1, 1), DraftNode(12, 0, 2)],
          "chain 4": [DraftNode(11, -1, 1), DraftNode(12, 0, 2), DraftNode(13, 1, 3)],
          "tree 1x3": [DraftNode(11, -1, 1), DraftNode(12, -1, 1), DraftNode(13, -1, 1)]}


def measure(target, n: int, reps: int) -> dict:
    """Median ms of each way on both caches over `n` cached tokens, interleaved."""
    prompt = torch.randint(100, 40000, (1, n))
    caches = {"slab": target.forward(prompt).past_key_values,
              "dynamic": target.forward(
                  prompt, past=DynamicCache(config=target.config)).past_key_values}
    times: dict[tuple[str, str], list[float]] = {
        (c, w): [] for c in caches for w in ("step", *SHAPES)}
    for _ in range(reps):
        for (cache_kind, way), samples in times.items():
            cache = caches[cache_kind]
            t0 = time.perf_counter()
            if way == "step":
                target.forward(torch.tensor([[5]]), past=cache)
            else:
                verify(target, SHAPES[way], 5, n, cache)
            samples.append(time.perf_counter() - t0)
            cache.crop(-(len(SHAPES.get(way, [])) + 1))
    med = {key: statistics.median(t[3:]) * 1e3 for key, t in times.items()}
    base = med[("dynamic", "step")]
    return {c: {w: {"ms": round(med[(c, w)], 1), "x_dynamic_step": round(med[(c, w)] / base, 3)}
                for w in ("step", *SHAPES)} for c in caches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="150,600,1500", help="cache lengths (prompt tokens)")
    ap.add_argument("--reps", type=int, default=14, help="interleaved repetitions (3 warm-up)")
    a = ap.parse_args()
    target = load_target("smollm2-135m", dtype=torch.bfloat16)
    torch.manual_seed(0)
    out = {f"{n} cached tokens": measure(target, n, a.reps)
           for n in (int(x) for x in a.lengths.split(","))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
