"""How much data k* needs (the paper's Fig. 3) and how k* depends on α and c_min (a sweep the
paper omits: it never states its α).

Stability keeps each conversation's supervised tokens as a sparse (ids, counts) pair, so every
random subset is one bincount away and every k* one exact solve (milliseconds) away.
The supervised tokens come from `vocab.counts.iter_supervised`; the curves and the solver
from `vocab.objective` and `vocab.optimize`; figures and tables are left to the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.flops import DraftFlops
from draftvocab.vocab.objective import make_objective
from draftvocab.vocab.optimize import optimize_objective


@dataclass(frozen=True)
class SparseCounts:
    """Supervised-token counts of single conversations, concatenated: conversation i owns
    entries `offsets[i]:offsets[i+1]` of `ids`/`counts`."""

    ids: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray

    @property
    def conversations(self) -> int:
        return self.offsets.size - 1

    @classmethod
    def from_conversations(cls, per_conversation: Iterable[np.ndarray]) -> SparseCounts:
        ids, counts, offsets = [], [], [0]
        for token_ids in per_conversation:
            u, c = np.unique(token_ids, return_counts=True)
            ids.append(u.astype(np.int32))
            counts.append(c.astype(np.int32))
            offsets.append(offsets[-1] + u.size)
        if len(offsets) == 1:
            raise DraftVocabError("no usable conversations")
        return cls(np.concatenate(ids), np.concatenate(counts), np.array(offsets))

    def subset_counts(self, chosen: np.ndarray, vocab_size: int) -> np.ndarray:
        starts, ends = self.offsets[chosen], self.offsets[chosen + 1]
        lengths = ends - starts
        # All entries of the chosen conversations, gathered without a Python loop.
        index = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        index += np.arange(lengths.sum())
        return np.bincount(self.ids[index], weights=self.counts[index],
                           minlength=vocab_size).astype(np.int64)


def default_sizes(n: int) -> list[int]:
    """1k, 2k, 5k, 10k, 25k, ... below n, then n itself (smaller steps for small data)."""
    steps = [100, 200, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
             500_000, 1_000_000]
    sizes = [s for s in steps if s < n and (s >= 1_000 or n < 5_000)]
    return [*sizes, n]


@dataclass(frozen=True)
class StabilityPoint:
    size: int
    ks: list[int]  # k* of each random subset of this size

    @property
    def mean(self) -> float:
        return float(np.mean(self.ks))

    @property
    def std(self) -> float:
        return float(np.std(self.ks))

    def to_json(self) -> dict:
        return {"size": self.size, "ks": self.ks, "mean": self.mean, "std": self.std,
                "min": min(self.ks), "max": max(self.ks)}


def stability(data: SparseCounts, vocab_size: int, flops: DraftFlops, *,
              sizes: Sequence[int] | None = None, repeats: int = 5, alpha: float = 0.5,
              c_min: float = 0.9, seed: int = 0, tolerance: float = 0.02,
              progress: Callable[[int], None] | None = None) -> dict:
    """k* over `repeats` random subsets per size; `stable_from` is the smallest size from which
    every subset's k* (at that size and all larger) is within `tolerance` of the k* on all data
    (None when only all of the data is: k* has not settled yet)."""
    n = data.conversations
    sizes = sorted(set(sizes or default_sizes(n)))
    if sizes[0] < 1 or sizes[-1] > n:
        raise DraftVocabError(f"sizes must be in [1, {n}] (the conversations counted), got "
                              f"{sizes[0]}..{sizes[-1]}")
    if repeats < 1:
        raise DraftVocabError("repeats must be at least 1")
    rng = np.random.default_rng(seed)

    def k_star(chosen) -> int:
        objective = make_objective(data.subset_counts(chosen, vocab_size), flops, alpha, c_min)
        return optimize_objective(objective, solver="exact").chosen.k

    reference = k_star(np.arange(n))
    points = []
    for size in sizes:
        ks = [reference if size == n else k_star(np.sort(rng.choice(n, size, replace=False)))
              for _ in range(repeats if size < n else 1)]
        points.append(StabilityPoint(size, ks))
        if progress:
            progress(1)
    stable_from = None
    for point in reversed(points):
        if max(abs(k - reference) for k in point.ks) <= tolerance * reference:
            stable_from = point.size
        else:
            break
    if stable_from == n and len(points) > 1:
        stable_from = None  # only all of the data is within tolerance: not yet stable
    return {"conversations": n, "reference_k": reference, "tolerance": tolerance,
            "alpha": alpha, "c_min": c_min, "repeats": repeats, "seed": seed,
            "stable_from": stable_from, "points": [p.to_json() for p in points]}


def sweep(counts: np.ndarray, flops: DraftFlops, alphas: Sequence[float],
          c_mins: Sequence[float]) -> list[dict]:
    """Exact k* for every (α, c_min) pair; an unreachable c_min gives k = None."""
    rows = []
    for c_min in c_mins:
        for alpha in alphas:
            objective = make_objective(counts, flops, alpha, c_min)
            try:
                k = optimize_objective(objective, solver="exact").chosen.k
            except DraftVocabError:
                rows.append({"alpha": alpha, "c_min": c_min, "k": None})
                continue
            c, r, u = objective.evaluate(k)
            rows.append({"alpha": alpha, "c_min": c_min, "k": k, "coverage": c,
                         "reduction": r, "utility": u})
    return rows
