"""What an exact bf16 tree verify costs against a plain step and a chain verify, with a tree
row's keys moved into place in the cache tensor (`stepwise.attention`, now) and gathered into a
new tensor per row (before; each row's query was packed on its own too), interleaved in one run
on the real target.

    python benchmarks/bench_tree_verify.py --lengths 100,400,1000 --reps 14

The tree is the bench's depth-2, top-3, 5-node shape (root, 3 children, 2 grandchildren under
different children); the chain is γ = 2. Prints, per cache length, the median ms of one target
forward, its ratio to the plain step and the ms spent inside attention (all layers), as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import AttentionInterface

from draftvocab.engine import stepwise
from draftvocab.engine.target import load_target
from draftvocab.engine.verify import DraftNode, verify


def gathered(module, query, key, value, attention_mask, **kwargs):
    """The previous verify attention: each row's query sliced and packed on its own, and a
    tree row's keys gathered with index_select (a copy of the whole prefix per row and
    layer)."""
    rows, scale = stepwise._ROWS.get(), kwargs.get("scaling")
    if rows is None:
        return stepwise.attention(module, query, key, value, attention_mask, **kwargs)
    b, h, _, d = query.shape
    hkv, outs = key.shape[1], []
    for r, (n, move) in enumerate(zip(rows.seen, rows.moves)):
        if move is None:
            k, v = key[:, :, :n], value[:, :, :n]
        else:
            idx = torch.cat([torch.arange(rows.m0, device=key.device), rows.m0 + move])
            k, v = key.index_select(2, idx), value.index_select(2, idx)
        packed = query[:, :, r:r + 1].reshape(b, hkv, h // hkv, d)
        outs.append(stepwise._one_query(packed, k, v, scale).reshape(b, h, 1, d))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="100,400,1000", help="cache lengths (prompt tokens)")
    ap.add_argument("--reps", type=int, default=14, help="interleaved repetitions (2 warm-up)")
    a = ap.parse_args()
    torch.manual_seed(0)
    target = load_target("smollm2-135m", dtype=torch.bfloat16)
    chain = [DraftNode(11, -1, 1), DraftNode(12, 0, 2)]
    tree = [DraftNode(11, -1, 1), DraftNode(12, -1, 1), DraftNode(13, -1, 1),
            DraftNode(14, 0, 2), DraftNode(15, 1, 2)]
    ways = {"plain": ([], stepwise.attention), "chain γ=2": (chain, stepwise.attention),
            "tree, in place": (tree, stepwise.attention), "tree, gathered": (tree, gathered)}
    inside = [0.0]  # seconds inside attention during the current forward

    def timed(attention):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attention(*args, **kwargs)
            finally:
                inside[0] += time.perf_counter() - t0
        return call

    out = {}
    try:
        for n in (int(x) for x in a.lengths.split(",")):
            cache = target.forward(torch.randint(100, 40000, (1, n))).past_key_values
            times: dict[str, list[float]] = {w: [] for w in ways}
            attn: dict[str, list[float]] = {w: [] for w in ways}
            for _ in range(a.reps):
                for way, (nodes, attention) in ways.items():
                    AttentionInterface.register(stepwise.NAME, timed(attention))
                    inside[0] = 0.0
                    t0 = time.perf_counter()
                    verify(target, nodes, 5, n, cache)
                    times[way].append(time.perf_counter() - t0)
                    attn[way].append(inside[0])
                    cache.crop(-(len(nodes) + 1))
            med = {w: statistics.median(t[2:]) * 1e3 for w, t in times.items()}
            out[f"{n} cached tokens"] = {
                w: {"ms": round(ms, 1), "x_step": round(ms / med["plain"], 2),
                    "attention_ms": round(statistics.median(attn[w][2:]) * 1e3, 1)}
                for w, ms in med.items()}
    finally:
        AttentionInterface.register(stepwise.NAME, stepwise.attention)
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
