"""What each few-row product form costs inside a whole fp32 target forward, side by side, and
which one the target chose (`engine/rowforms.py`, `Target.choose_forms`).

    python benchmarks/bench_rowforms.py --reps 7 --rounds 2

Prints, per row count, the median ms of a forward on the KV cache of a short prompt for every
form (forms alternate within each round) and the target's choice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from draftvocab.engine.rowforms import candidate_forms
from draftvocab.engine.target import load_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,2,3,4,8")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tgt = load_target("smollm2-135m")
    prompt = tgt.prompt_ids([{"role": "user", "content": "Explain how a bicycle works, "
                              "with examples of gears, brakes and wheels."}])
    cache = tgt.forward(torch.tensor([prompt])).past_key_values
    ks = [int(k) for k in args.rows.split(",")]
    t0 = time.perf_counter()
    chosen = {k: tgt._form(k) for k in ks}
    print(f"# choosing forms for {len(ks)} row counts took {time.perf_counter() - t0:.1f} s")

    def forward(k: int) -> float:
        t0 = time.perf_counter()
        tgt.forward(torch.tensor([list(range(100, 100 + k))]), past=cache)
        cache.crop(-k)
        return time.perf_counter() - t0

    times: dict[int, dict[str, list[float]]] = {k: {} for k in ks}
    for _ in range(args.rounds):
        for k in ks:
            for form in (None, *candidate_forms(k)):
                tgt._forms[k] = form
                forward(k)
                times[k].setdefault(form or "nn.Linear", []).extend(
                    forward(k) for _ in range(args.reps))
            tgt._forms[k] = chosen[k]
    print(json.dumps({f"{k} rows": {"chosen": chosen[k], **{
        f: f"{statistics.median(v) * 1e3:.1f} ms" for f, v in times[k].items()}}
        for k in ks}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
