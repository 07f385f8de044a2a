"""Solvers for k* = argmax Ũ(k) over k in [k_min, k_max] (the paper's eq. 1).

Owns the exact solver (one vectorised argmax over the precomputed curve), the paper's TPE
search (Optuna, for comparison and reproduction), and their result records. The curves
themselves come from `objective`; turning k* into a vocabulary is `mapping`'s job.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna

from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.flops import DraftFlops
from draftvocab.vocab.objective import Objective, make_objective

SOLVERS = ("exact", "tpe", "both")

Progress = Callable[[int, int], None]


@dataclass
class Trial:
    """One evaluated vocabulary size."""

    number: int
    k: int
    coverage: float
    reduction: float
    utility: float
    feasible: bool


@dataclass
class SolverResult:
    """The best k one solver found, and every k it evaluated."""

    solver: str
    k: int
    coverage: float
    reduction: float
    utility: float
    seconds: float
    trials: list[Trial]

    def to_json(self) -> dict[str, Any]:
        """Summary without the trials (see `OptimizeResult.trials_table`)."""
        out = asdict(self)
        del out["trials"]
        return out


@dataclass
class OptimizeResult:
    """k* and how it was found; `chosen` is exact's answer whenever exact ran."""

    chosen: SolverResult
    exact: SolverResult | None
    tpe: SolverResult | None
    alpha: float
    c_min: float
    k_min: int
    k_max: int
    n_trials: int
    seed: int
    vocab_size: int

    @property
    def tpe_regret(self) -> float | None:
        """Utility TPE left on the table versus the true optimum (≥ 0); None unless both ran."""
        if self.exact is None or self.tpe is None:
            return None
        return self.exact.utility - self.tpe.utility

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable summary; per-trial rows live in `trials_table()`."""
        return {
            "k": self.chosen.k,
            "coverage": self.chosen.coverage,
            "reduction": self.chosen.reduction,
            "utility": self.chosen.utility,
            "solver": self.chosen.solver,
            "alpha": self.alpha,
            "c_min": self.c_min,
            "k_min": self.k_min,
            "k_max": self.k_max,
            "n_trials": self.n_trials,
            "seed": self.seed,
            "vocab_size": self.vocab_size,
            "tpe_regret": self.tpe_regret,
            "chosen": self.chosen.to_json(),
            "exact": None if self.exact is None else self.exact.to_json(),
            "tpe": None if self.tpe is None else self.tpe.to_json(),
        }

    def trials_table(self) -> list[dict[str, Any]]:
        """Every evaluated k of every solver that ran, one dict per row."""
        return [
            {"solver": res.solver, **asdict(trial)}
            for res in (self.exact, self.tpe)
            if res is not None
            for trial in res.trials
        ]


def _trial(objective: Objective, number: int, k: int) -> Trial:
    coverage, reduction, utility = objective.evaluate(k)
    return Trial(number, k, coverage, reduction, utility, coverage >= objective.c_min)


def _solve_exact(objective: Objective, k_min: int, k_max: int) -> SolverResult:
    start = time.perf_counter()
    # np.argmax returns the first maximum, so ties go to the smallest k.
    k = k_min + int(np.argmax(objective.utility[k_min : k_max + 1]))
    seconds = time.perf_counter() - start
    best = _trial(objective, 0, k)
    return SolverResult("exact", k, best.coverage, best.reduction, best.utility, seconds, [best])


def _solve_tpe(
    objective: Objective,
    k_min: int,
    k_max: int,
    n_trials: int,
    seed: int,
    progress: Progress | None,
) -> SolverResult:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        start = time.perf_counter()
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
        )
        trials: list[Trial] = []
        # ask/tell rather than study.optimize: the objective is a lookup, and this records
        # each trial and reports progress without callbacks.
        for number in range(n_trials):
            handle = study.ask()
            k = handle.suggest_int("k", k_min, k_max)
            trial = _trial(objective, number, k)
            study.tell(handle, trial.utility)
            trials.append(trial)
            if progress is not None:
                progress(number + 1, n_trials)
        seconds = time.perf_counter() - start
    finally:
        optuna.logging.set_verbosity(verbosity)
    best = max(trials, key=lambda t: (t.utility, -t.k))
    return SolverResult("tpe", best.k, best.coverage, best.reduction, best.utility, seconds, trials)


def _check_int(name: str, value: Any) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise DraftVocabError(f"{name} must be an integer, got {value!r}") from None


def optimize_objective(
    objective: Objective,
    *,
    k_min: int = 1,
    k_max: int | None = None,
    solver: str = "both",
    n_trials: int = 100,
    seed: int = 0,
    progress: Progress | None = None,
) -> OptimizeResult:
    """`optimize_vocab` on a prebuilt `Objective` (reuse it for plots and reports)."""
    vocab = objective.vocab_size
    if solver not in SOLVERS:
        raise DraftVocabError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
    k_min = _check_int("k_min", k_min)
    k_max = vocab if k_max is None else _check_int("k_max", k_max)
    n_trials = _check_int("n_trials", n_trials)
    seed = _check_int("seed", seed)
    for name, k in (("k_min", k_min), ("k_max", k_max)):
        if not 1 <= k <= vocab:
            raise DraftVocabError(f"k must be in [1, V={vocab}], got {name}={k}")
    if k_min > k_max:
        raise DraftVocabError(f"k_min={k_min} is larger than k_max={k_max}")
    if n_trials < 1:
        raise DraftVocabError(f"n_trials must be at least 1, got {n_trials}")
    window = objective.coverage[k_min : k_max + 1]
    if window[-1] < objective.c_min:  # coverage never decreases with k
        best = k_min + int(np.argmax(window))
        raise DraftVocabError(
            f"c_min={objective.c_min:g} is unreachable: the best coverage with k ≤ {k_max} "
            f"is {window.max():.4f} (k={best})"
        )
    exact = _solve_exact(objective, k_min, k_max) if solver in ("exact", "both") else None
    tpe = (
        _solve_tpe(objective, k_min, k_max, n_trials, seed, progress)
        if solver in ("tpe", "both")
        else None
    )
    chosen = exact if exact is not None else tpe
    assert chosen is not None
    return OptimizeResult(
        chosen=chosen,
        exact=exact,
        tpe=tpe,
        alpha=objective.alpha,
        c_min=objective.c_min,
        k_min=k_min,
        k_max=k_max,
        n_trials=n_trials,
        seed=seed,
        vocab_size=vocab,
    )


def optimize_vocab(
    counts: np.ndarray,
    flops: DraftFlops,
    *,
    alpha: float = 0.5,
    c_min: float = 0.9,
    k_min: int = 1,
    k_max: int | None = None,
    solver: str = "both",
    n_trials: int = 100,
    seed: int = 0,
    progress: Progress | None = None,
) -> OptimizeResult:
    """Choose the draft vocabulary size k* maximising Ũ(k) subject to C(k) ≥ c_min.

    "exact" scans every k (the true optimum, milliseconds even at V=152k); "tpe" is the
    paper's Optuna search, kept to reproduce it; "both" returns exact's k* and TPE's regret.

    Example:
        >>> res = optimize_vocab(counts, flops_breakdown(cfg), alpha=0.5, c_min=0.9)
        >>> res.chosen.k, res.tpe_regret
    """
    objective = make_objective(counts, flops, alpha, c_min)
    return optimize_objective(
        objective,
        k_min=k_min,
        k_max=k_max,
        solver=solver,
        n_trials=n_trials,
        seed=seed,
        progress=progress,
    )
