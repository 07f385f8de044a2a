"""How well a chosen vocabulary covers evaluation data (the paper's Tables 4 and 5) and what it
loses (its missing-token analysis).

Frequency-weighted coverage is the share of evaluation tokens the draft can emit — an upper
bound on its per-token acceptance. Unique-token coverage is the share of distinct evaluation
tokens it can emit: low values with high weighted coverage mean the losses are a long tail of
rare tokens, which is the paper's argument for trimming.

Owns only the numbers: counting is `vocab.counts`'s, the report's layout `missing.py`'s and
`tables.py`'s, writing files the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from draftvocab.core.errors import DraftVocabError


@dataclass(frozen=True)
class CoverageRow:
    name: str
    tokens: int  # evaluation tokens counted
    coverage: float  # frequency-weighted: Σ counts[in vocab] / Σ counts
    unique_tokens: int  # distinct token ids seen
    unique_coverage: float  # distinct ids in the vocabulary / distinct ids seen
    train_share: float | None = None  # this domain's share of the training tokens (Table 5)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def coverage_row(name: str, counts: np.ndarray, t2d: np.ndarray,
                 train_share: float | None = None) -> CoverageRow:
    counts = np.asarray(counts)
    t2d = np.asarray(t2d, dtype=bool)
    if counts.shape != t2d.shape:
        raise DraftVocabError(f"{name}: counts cover {counts.size} ids, the vocabulary's V is "
                              f"{t2d.size}")
    total = int(counts.sum())
    seen = counts > 0
    n_seen = int(seen.sum())
    return CoverageRow(
        name=name, tokens=total,
        coverage=float(counts[t2d].sum() / total) if total else float("nan"),
        unique_tokens=n_seen,
        unique_coverage=float((seen & t2d).sum() / n_seen) if n_seen else float("nan"),
        train_share=train_share)


def coverage_table(groups: dict[str, np.ndarray], t2d: np.ndarray,
                   train: dict[str, np.ndarray] | None = None) -> list[CoverageRow]:
    """One row per evaluation group (sorted by name) and a combined row "all"; with `train`
    (counts per the same groups), each domain's share of training tokens next to it."""
    if not groups:
        raise DraftVocabError("no evaluation data")
    train_total = sum(int(c.sum()) for c in train.values()) if train else 0
    rows = []
    for name in sorted(groups):
        share = None
        if train:
            share = int(train[name].sum()) / train_total if name in train and train_total else 0.0
        rows.append(coverage_row(name, groups[name], t2d, share))
    if len(groups) > 1:
        combined = np.sum(list(groups.values()), axis=0)
        rows.append(coverage_row("all", combined, t2d, 1.0 if train else None))
    return rows


@dataclass(frozen=True)
class MissingToken:
    id: int
    text: str | None
    count: int
    share: float  # of the evaluation set's tokens


def missing_tokens(counts: np.ndarray, t2d: np.ndarray, top: int = 20,
                   decode: Callable[[list[int]], list[str]] | None = None) -> list[MissingToken]:
    """The `top` most frequent evaluation tokens the vocabulary cannot emit (ties: lower id)."""
    counts = np.asarray(counts)
    t2d = np.asarray(t2d, dtype=bool)
    if counts.shape != t2d.shape:
        raise DraftVocabError(f"counts cover {counts.size} ids, the vocabulary's V is {t2d.size}")
    outside = np.where(t2d, 0, counts)
    order = np.argsort(-outside, kind="stable")[:top]
    order = order[outside[order] > 0]
    ids = order.tolist()
    texts = list(decode(ids)) if decode and ids else [None] * len(ids)
    total = max(int(counts.sum()), 1)
    return [MissingToken(i, t, int(outside[i]), int(outside[i]) / total)
            for i, t in zip(ids, texts)]
