"""Training-free trimming of an existing draft (VocabTrim-style; the paper retrains instead).

A draft's LM head row i scores target id `i + d2t[i]` and nothing else reads it, so dropping
rows is exact for the tokens that stay: the kept logits are bit-identical and only the
softmax's normaliser changes. We choose k < k0 with the paper's objective restricted to the
draft's current vocabulary — coverage counts only tokens the draft can still emit, over *all*
supervised tokens of the user's domain — then slice `lm_head` and rewrite `d2t`/`t2d`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from draftvocab.core.errors import DraftVocabError


@dataclass(frozen=True)
class RetrofitResult:
    k_before: int
    k_after: int
    coverage_before: float  # C over the domain's supervised tokens, old vocabulary
    coverage_after: float
    reduction: float  # R(k) vs the full target vocabulary, as in `optimize`
    reduction_vs_before: float  # 1 − F(k_after) / F(k_before): the draft's FLOPs saved
    utility: float
    out: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def retrofit_draft(draft: str | os.PathLike, counts: np.ndarray, out: str | os.PathLike, *,
                   k: int | None = None, alpha: float = 0.5, c_min: float = 0.9,
                   solver: str = "exact", n_trials: int = 100, seed: int = 0) -> RetrofitResult:
    """Trim `draft` (our checkpoint directory) to the k best of its own tokens for `counts`
    (int64[V], the user's domain), write the trimmed draft to `out`."""
    import torch

    from draftvocab.interop.formats import _load_ours, _write_checkpoint
    from draftvocab.vocab.flops import flops_breakdown
    from draftvocab.vocab.mapping import mapping_from_ids
    from draftvocab.vocab.objective import Objective, coverage_curve, frequency_order
    from draftvocab.vocab.optimize import optimize_objective

    hf, state = _load_ours(Path(draft))
    vocab, k0 = int(hf["vocab_size"]), int(hf["draft_vocab_size"])
    counts = np.asarray(counts)
    if counts.shape != (vocab,):
        raise DraftVocabError(f"counts cover {counts.size} ids, the draft's target has V={vocab}: "
                              "count with the target's tokenizer")
    t2d = state["t2d"].numpy().astype(bool)
    own = np.where(t2d, counts, 0)
    total, reachable = int(counts.sum()), int(own.sum())
    if total == 0:
        raise DraftVocabError("the counts are all zero")
    if reachable == 0:
        raise DraftVocabError("none of the draft's tokens occur in these counts")
    coverage = coverage_curve(own) * (reachable / total)  # true coverage, flat beyond k0
    flops = flops_breakdown(hf)
    reduction = np.asarray(flops.latency_reduction(np.arange(vocab + 1)), dtype=np.float64)
    objective = Objective(coverage=coverage, reduction=reduction, alpha=alpha, c_min=c_min)
    if k is None:
        k = optimize_objective(objective, k_min=1, k_max=k0, solver=solver, n_trials=n_trials,
                               seed=seed).chosen.k
    elif not 1 <= k <= k0:
        raise DraftVocabError(f"k must be in [1, {k0}] (the draft's current vocabulary), got {k}")
    order = frequency_order(own)
    keep = np.sort(order[t2d[order]][:k])  # the draft's own ids only, by domain frequency
    old_ids = np.flatnonzero(t2d)
    rows = torch.from_numpy(np.searchsorted(old_ids, keep))
    mapping = mapping_from_ids(keep, vocab)
    state = dict(state)
    state["lm_head.weight"] = state["lm_head.weight"].index_select(0, rows).contiguous()
    state["d2t"] = torch.from_numpy(mapping.d2t.copy())
    state["t2d"] = torch.from_numpy(mapping.t2d.copy())
    hf = {**hf, "draft_vocab_size": int(k)}
    _write_checkpoint(out, hf, state)
    c, r, u = objective.evaluate(int(k))
    return RetrofitResult(
        k_before=k0, k_after=int(k), coverage_before=float(coverage[k0]), coverage_after=c,
        reduction=r, reduction_vs_before=1 - float(flops.total(int(k))) / float(flops.total(k0)),
        utility=u, out=str(out))
