"""The objective of the paper's section 2: coverage C(k), reduction R(k), utility U(k).

Owns the frequency order of token ids, the coverage curve over every k in [0, V], and the
penalised utility (eq. 5) evaluated for all k at once. It does not search for k* (that is
`optimize`) and does not count tokens (that is `counts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.flops import DraftFlops

INFEASIBLE = -1.0  # the paper's penalty for C(k) < c_min (eq. 5)


def _as_counts(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise DraftVocabError(
            f"token counts must be a non-empty 1-D array, got shape {counts.shape}"
        )
    if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
        raise DraftVocabError(f"token counts must be numeric, got dtype {counts.dtype}")
    if np.issubdtype(counts.dtype, np.floating) and not np.isfinite(counts).all():
        raise DraftVocabError("token counts contain NaN or infinity")
    if (counts < 0).any():
        raise DraftVocabError("token counts must be non-negative")
    return counts


def frequency_order(counts: np.ndarray) -> np.ndarray:
    """Token ids by count descending, ties by ascending id, so top-k is reproducible.

    Example:
        >>> frequency_order(np.array([1, 5, 5, 0]))
        array([1, 2, 0, 3])
    """
    counts = _as_counts(counts)
    # Stable sort of the negated counts keeps equal counts in ascending-id order.
    keys = counts.astype(np.int64) if counts.dtype.kind in "ub" else counts
    return np.argsort(-keys, kind="stable").astype(np.int64)


def coverage_curve(counts: np.ndarray) -> np.ndarray:
    """C[k] for k = 0..V (eq. 2): the share of counted tokens inside the top-k, C[0] = 0.

    Example:
        >>> coverage_curve(np.array([1, 3]))
        array([0.  , 0.75, 1.  ])
    """
    counts = _as_counts(counts)
    ranked = np.sort(counts)[::-1]
    # Integer cumsum is exact up to 2**63; float cumsum would drift on 10**9-token corpora.
    acc = np.int64 if counts.dtype.kind in "iub" else np.float64
    cum = np.concatenate(([0], np.cumsum(ranked, dtype=acc)))
    total = cum[-1]
    if total <= 0:
        raise DraftVocabError("token counts sum to zero: no tokens were counted")
    return cum.astype(np.float64) / float(total)


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise DraftVocabError(f"{name} must be in [0, 1], got {value:g}")
    return value


def check_weights(alpha: float, c_min: float) -> tuple[float, float]:
    """(alpha, c_min) as floats, or a one-line error if either lies outside [0, 1]: callers
    check the utility's parameters before any counting.

    Example:
        >>> check_weights(0.5, 0.9)
        (0.5, 0.9)
    """
    return _check_unit("alpha", alpha), _check_unit("c_min", c_min)


def utility_curve(
    coverage: np.ndarray, reduction: np.ndarray, alpha: float, c_min: float
) -> np.ndarray:
    """Penalised utility Ũ = α·C + (1−α)·R, or −1 where C < c_min (eqs. 4–5).

    Example:
        >>> utility_curve(np.array([0.5, 1.0]), np.array([0.6, 0.0]), 0.5, 0.9)
        array([-1. ,  0.5])
    """
    alpha, c_min = check_weights(alpha, c_min)
    coverage = np.asarray(coverage, dtype=np.float64)
    reduction = np.asarray(reduction, dtype=np.float64)
    if coverage.shape != reduction.shape:
        raise DraftVocabError(
            f"coverage and reduction differ in shape: {coverage.shape} vs {reduction.shape}"
        )
    utility = alpha * coverage + (1.0 - alpha) * reduction
    return np.where(coverage >= c_min, utility, INFEASIBLE)


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly, not with ==
class Objective:
    """C, R and penalised U for every k in [0, V], so any k is an O(1) lookup.

    Example:
        >>> obj = make_objective(counts, flops, alpha=0.5, c_min=0.9)
        >>> c, r, u = obj.evaluate(13264)
    """

    coverage: np.ndarray
    reduction: np.ndarray
    alpha: float
    c_min: float
    utility: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _check_unit("alpha", self.alpha))
        object.__setattr__(self, "c_min", _check_unit("c_min", self.c_min))
        object.__setattr__(
            self, "utility", utility_curve(self.coverage, self.reduction, self.alpha, self.c_min)
        )

    @property
    def vocab_size(self) -> int:
        return self.coverage.size - 1

    def evaluate(self, k: int) -> tuple[float, float, float]:
        """(C(k), R(k), Ũ(k)) for one vocabulary size."""
        if not 0 <= k <= self.vocab_size:
            raise DraftVocabError(f"k must be in [0, V={self.vocab_size}], got {k}")
        return float(self.coverage[k]), float(self.reduction[k]), float(self.utility[k])


def make_objective(counts: np.ndarray, flops: DraftFlops, alpha: float, c_min: float) -> Objective:
    """Build the full objective from token counts and the draft's FLOPs model.

    Example:
        >>> make_objective(np.ones(1000), flops_breakdown(cfg), 0.5, 0.9).evaluate(900)
    """
    counts = _as_counts(counts)
    if counts.size != flops.vocab_size:
        raise DraftVocabError(
            f"token counts cover {counts.size} ids but the model vocab_size is "
            f"{flops.vocab_size}; count with the target model's tokenizer"
        )
    coverage = coverage_curve(counts)
    reduction = np.asarray(flops.latency_reduction(np.arange(counts.size + 1)), dtype=np.float64)
    return Objective(coverage=coverage, reduction=reduction, alpha=alpha, c_min=c_min)
