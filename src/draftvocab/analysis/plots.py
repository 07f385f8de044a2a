"""The paper's two figures for one run: utility vs k (Fig. 1) and the coverage–latency
Pareto front (Fig. 2).

Owns only drawing: it reads an `Objective` and an `OptimizeResult` and writes PNGs. Figures
are built on `matplotlib.figure.Figure` directly, so nothing touches pyplot's global state.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from draftvocab.core.atomic import atomic_write
from draftvocab.vocab.objective import Objective
from draftvocab.vocab.optimize import OptimizeResult, Trial

_CURVE_POINTS = 4000  # log-spaced k values: the curve is smooth at that density, and fast
_SCATTER_POINTS = 200
_LABEL_BOX = {"boxstyle": "round", "fc": "white", "ec": "0.6", "alpha": 0.9}


def _log_grid(k_min: int, k_max: int, n: int, extra: int) -> np.ndarray:
    grid = np.geomspace(k_min, k_max, num=min(n, k_max - k_min + 1)).round().astype(np.int64)
    return np.unique(np.concatenate((grid, [k_min, k_max, extra])))


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    return atomic_write(path, buf.getvalue())


def _tpe_trials(result: OptimizeResult) -> list[Trial]:
    return result.tpe.trials if result.tpe is not None else []


def _first_feasible(objective: Objective) -> int:
    # Coverage never decreases with k, so the feasible set is one interval [k_c, V].
    return int(np.searchsorted(objective.coverage, objective.c_min, side="left"))


def plot_utility(objective: Objective, result: OptimizeResult, path: str | os.PathLike) -> Path:
    """Utility vs vocabulary size (log k), TPE trials, k*, and the infeasible region shaded.

    Example:
        >>> plot_utility(make_objective(counts, flops, 0.5, 0.9), result, "utility.png")
    """
    best = result.chosen
    vocab = objective.vocab_size
    ks = _log_grid(1, vocab, _CURVE_POINTS, best.k)
    raw = objective.alpha * objective.coverage + (1 - objective.alpha) * objective.reduction
    k_c = _first_feasible(objective)
    feasible = ks >= k_c

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    if k_c > 1:
        ax.axvspan(
            1,
            min(k_c, vocab),
            color="0.85",
            zorder=0,
            label=f"infeasible: C(k) < {objective.c_min:g}",
        )
        ax.plot(
            ks[~feasible],
            raw[ks[~feasible]],
            color="0.55",
            ls="--",
            lw=1,
            label="U(k) without the constraint",
        )
    ax.plot(ks[feasible], raw[ks[feasible]], color="tab:blue", lw=1.8, label="U(k) (exact)")
    trials = _tpe_trials(result)
    if trials:
        tk = np.array([t.k for t in trials])
        tu = raw[tk]
        ok = np.array([t.feasible for t in trials])
        ax.scatter(
            tk[ok],
            tu[ok],
            s=18,
            color="tab:orange",
            edgecolor="k",
            lw=0.4,
            zorder=3,
            label=f"TPE trials ({len(trials)})",
        )
        if (~ok).any():
            ax.scatter(
                tk[~ok],
                tu[~ok],
                s=18,
                facecolor="none",
                edgecolor="tab:orange",
                zorder=3,
                label="TPE trials, infeasible (scored −1)",
            )
    ax.axvline(best.k, color="tab:red", lw=1, ls=":")
    ax.scatter(
        [best.k],
        [best.utility],
        marker="*",
        s=160,
        color="tab:red",
        zorder=4,
        label=f"k* = {best.k:,}",
    )
    ax.annotate(
        f"k* = {best.k:,}\nU = {best.utility:.3f}\nC = {best.coverage:.1%}, "
        f"R = {best.reduction:.1%}",
        xy=(best.k, best.utility),
        xytext=(-30, -70),
        textcoords="offset points",
        ha="right",
        fontsize=8,
        bbox=_LABEL_BOX,
        arrowprops={"arrowstyle": "-", "color": "tab:red", "lw": 0.8},
    )
    ax.set_xscale("log")
    ax.set_xlim(1, vocab)
    ax.set_xlabel("draft vocabulary size k")
    ax.set_ylabel(f"utility U(k), α = {objective.alpha:g}")
    ax.set_title(f"Utility vs draft vocabulary size (V = {vocab:,}, c_min = {objective.c_min:g})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def plot_pareto(objective: Objective, result: OptimizeResult, path: str | os.PathLike) -> Path:
    """Coverage vs latency reduction: evaluated k coloured by size, Pareto front, k* star.

    Example:
        >>> plot_pareto(make_objective(counts, flops, 0.5, 0.9), result, "pareto.png")
    """
    best = result.chosen
    vocab = objective.vocab_size
    cov, red = objective.coverage, objective.reduction
    trials = _tpe_trials(result)
    if trials:
        pk = np.array([t.k for t in trials])
    else:
        pk = _log_grid(result.k_min, result.k_max, _SCATTER_POINTS, best.k)
    # R falls strictly with k, so k is on the front exactly when it raises coverage.
    front = _log_grid(1, vocab, _CURVE_POINTS, best.k)
    front = front[cov[front] > cov[front - 1]]

    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot()
    ax.plot(red[front], cov[front], color="0.4", lw=1.2, label="Pareto front", zorder=1)
    points = ax.scatter(
        red[pk],
        cov[pk],
        c=pk,
        cmap="viridis",
        norm=LogNorm(vmin=max(1, int(pk.min())), vmax=max(2, int(pk.max()))),
        s=22,
        edgecolor="k",
        lw=0.3,
        zorder=2,
        label="TPE trials" if trials else "k on a log grid",
    )
    fig.colorbar(points, ax=ax, label="draft vocabulary size k")
    ax.axhspan(
        0, objective.c_min, color="0.85", zorder=0, label=f"infeasible: C(k) < {objective.c_min:g}"
    )
    ax.scatter(
        [best.reduction],
        [best.coverage],
        marker="*",
        s=260,
        color="red",
        edgecolor="k",
        lw=0.5,
        zorder=4,
        label=f"k* = {best.k:,}",
    )
    ax.annotate(
        f"C = {best.coverage:.1%}\nR = {best.reduction:.1%}",
        xy=(best.reduction, best.coverage),
        xytext=(-30, -50),
        textcoords="offset points",
        ha="right",
        fontsize=8,
        bbox=_LABEL_BOX,
        arrowprops={"arrowstyle": "-", "color": "red", "lw": 0.8},
    )
    ax.set_xlabel("latency reduction R(k) (draft FLOPs)")
    ax.set_ylabel("token coverage C(k)")
    ax.set_ylim(max(0.0, cov[pk].min() - 0.05), 1.01)
    ax.set_title("Coverage–latency trade-off")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def plot_stability(result: dict, path: str | os.PathLike) -> Path:
    """k* vs number of training conversations: every subset, mean ± std, the ±tolerance band
    around k* on all data (the paper's Fig. 3)."""
    points = result["points"]
    sizes = np.array([p["size"] for p in points])
    means = np.array([p["mean"] for p in points])
    stds = np.array([p["std"] for p in points])
    ref, tol = result["reference_k"], result["tolerance"]
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    ax.axhspan(ref * (1 - tol), ref * (1 + tol), color="tab:green", alpha=0.15,
               label=f"k* on all data ± {tol:.0%}")
    for p in points:
        ax.scatter([p["size"]] * len(p["ks"]), p["ks"], s=12, color="0.6", zorder=2)
    ax.errorbar(sizes, means, yerr=stds, fmt="o-", color="tab:blue", capsize=3, zorder=3,
                label=f"mean ± std of {result['repeats']} subsets")
    if result.get("stable_from"):
        ax.axvline(result["stable_from"], color="tab:green", ls="--",
                   label=f"stable from {result['stable_from']:,} conversations")
    ax.set_xscale("log")
    ax.set_xlabel("training conversations")
    ax.set_ylabel("k*")
    ax.set_title(f"k* stability (α = {result['alpha']}, c_min = {result['c_min']})")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep(rows: list[dict], path: str | os.PathLike) -> Path:
    """Heatmap of k* over α (x) and c_min (y); blank where c_min is unreachable."""
    alphas = sorted({r["alpha"] for r in rows})
    c_mins = sorted({r["c_min"] for r in rows})
    grid = np.full((len(c_mins), len(alphas)), np.nan)
    for r in rows:
        if r["k"] is not None:
            grid[c_mins.index(r["c_min"]), alphas.index(r["alpha"])] = r["k"]
    fig = Figure(figsize=(1.1 * len(alphas) + 2.5, 0.6 * len(c_mins) + 2))
    ax = fig.subplots()
    valid = grid[np.isfinite(grid)]
    norm = LogNorm(vmin=max(valid.min(), 1), vmax=max(valid.max(), 2)) if valid.size else None
    im = ax.imshow(grid, cmap="viridis", norm=norm, aspect="auto", origin="lower")
    for (i, j), k in np.ndenumerate(grid):
        text = "—" if np.isnan(k) else f"{int(k):,}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7,
                color="white" if np.isfinite(k) and valid.size and k < np.median(valid) else "k")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(c_mins)), [f"{c:g}" for c in c_mins])
    ax.set_xlabel("α (weight of coverage)")
    ax.set_ylabel("c_min")
    ax.set_title("k* over α and c_min")
    fig.colorbar(im, ax=ax, label="k*")
    return _save(fig, path)


def plot_latency(ks: np.ndarray, seconds: np.ndarray, r_measured: np.ndarray,
                 r_flops: np.ndarray, path: str | os.PathLike, *, title: str = "") -> Path:
    """Left: measured draft-forward time vs k. Right: R(k) from FLOPs vs from measured time."""
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ks, 1e3 * seconds, "o-", ms=3)
    ax1.set_xscale("log")
    ax1.set_xlabel("draft vocabulary size k")
    ax1.set_ylabel("one draft forward (ms)")
    ax1.set_title(title or "measured draft latency")
    ax1.grid(alpha=0.3)
    grid = np.unique(np.geomspace(1, r_flops.size - 1, 400).astype(int))
    ax2.plot(grid, r_flops[grid], label="R(k) from FLOPs (paper)")
    ax2.plot(grid, r_measured[grid], label="R(k) measured")
    _k_axis(ax2, "latency reduction R(k)", "FLOPs vs measured latency reduction")
    return _save(fig, path)


def _k_axis(ax, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("draft vocabulary size k")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def plot_speed(ks: np.ndarray, tokens_per_s: np.ndarray, k_best: int, path: str | os.PathLike,
               *, measured: list[tuple[int, float, float]] | None = None,
               plain: float | None = None) -> Path:
    """Predicted tokens/s vs k, its argmax, and (k, measured, ±ci) points if given."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    ax.plot(ks, tokens_per_s, label="predicted")
    ax.axvline(k_best, color="tab:red", ls="--", label=f"predicted k* = {k_best:,}")
    if measured:
        mk, mv, me = zip(*measured)
        ax.errorbar(mk, mv, yerr=me, fmt="o", color="k", capsize=3, label="measured")
    if plain:
        ax.axhline(plain, color="0.5", ls=":", label=f"plain decoding {plain:.1f}")
    _k_axis(ax, "tokens/s", "Predicted end-to-end speed")
    return _save(fig, path)


def plot_throughput(report: dict, path: str | os.PathLike) -> Path:
    """Spec-Bench tokens/s per category and variant, mean ± 95 % CI (bench.run_benchmark)."""
    names = report["variants"]
    cats = list(report["table"])
    fig = Figure(figsize=(max(6, 1.3 * len(cats) * len(names) / 2), 4))
    ax = fig.subplots()
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        means = [(report["table"][c][name]["tokens_per_s"] or (0.0, 0.0))[0] for c in cats]
        errs = [(report["table"][c][name]["tokens_per_s"] or (0.0, 0.0))[1] for c in cats]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(cats))]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=name)
    ax.set_xticks(range(len(cats)), cats, rotation=20)
    ax.set_ylabel("output tokens/s")
    ax.set_title("Spec-Bench decoding throughput (mean ± 95 % CI)")
    ax.legend()
    return _save(fig, path)


def plot_training(log: list[dict], evals: list[dict], path: str | os.PathLike) -> Path:
    """Left: training top-1 accuracy of TTT steps 0-3 (smoothed). Right: held-out chain τ and
    held-out acc@0-3. Both against supervised training tokens."""
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    tokens = np.array([e.get("tokens", 0) for e in log], dtype=float)
    for j in range(4):
        acc = np.array([(e.get("acc") or [None] * 4)[j] if j < len(e.get("acc") or []) else None
                        for e in log], dtype=float)
        if np.isfinite(acc).any():
            window = max(1, len(acc) // 30)
            smooth = np.convolve(np.nan_to_num(acc), np.ones(window) / window, mode="valid")
            ax1.plot(tokens[window - 1:], smooth, label=f"acc@{j}")
    ax1.set_xlabel("supervised training tokens")
    ax1.set_ylabel("top-1 accuracy (training batches)")
    ax1.set_title("training accuracy per TTT step")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    x = [e["tokens"] for e in evals]
    ax2.plot(x, [e["tau"] for e in evals], "o-", color="k", label=f"held-out τ (γ={evals[0]['gamma']})")
    ax2.set_xlabel("supervised training tokens")
    ax2.set_ylabel("held-out τ (tokens per verify)")
    ax2.grid(alpha=0.3)
    right = ax2.twinx()
    for j in range(min(4, len(evals[0].get("acc", [])))):
        right.plot(x, [e["acc"][j] for e in evals], "--", alpha=0.7, label=f"held-out acc@{j}")
    right.set_ylabel("held-out top-1 accuracy")
    lines = ax2.get_lines() + right.get_lines()
    ax2.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="lower right")
    ax2.set_title("held-out acceptance")
    return _save(fig, path)


def plot_tau_curves(curves: dict[str, list[tuple[float, float]]], path: str | os.PathLike,
                    gamma: int) -> Path:
    """Held-out τ against supervised training tokens for several training runs, all measured on
    one held-out file: runs whose own evaluation sets differ become comparable on one axis."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for name, points in curves.items():
        x, y = zip(*sorted(points), strict=True)
        ax.plot(x, y, "o-", label=name)
    ax.set_xlabel("supervised training tokens")
    ax.set_ylabel(f"held-out τ (γ={gamma}, tokens per verify)")
    ax.set_title("held-out τ on the same answers, per training run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _log_fit(tokens, taus) -> tuple[float, float]:
    """(a, b) of τ = a + b·log10(tokens), least squares."""
    b, a = np.polyfit(np.log10(np.asarray(tokens, dtype=float)), np.asarray(taus, dtype=float), 1)
    return float(a), float(b)


def tokens_for_tau(tokens: list[float], taus: list[float], tau: float) -> float | None:
    """Training tokens at which τ = a + b·log10(tokens), fitted to the given points, reaches
    `tau`; None when the fit does not rise. A straight line in log tokens is what the held-out
    curves here look like past the first epoch, so this is an order of magnitude, no more."""
    a, b = _log_fit(tokens, taus)
    return float(10 ** ((tau - a) / b)) if b > 0 else None


def plot_ceiling(evals: list[dict], reached: dict[str, float], needed: dict[str, float],
                 path: str | os.PathLike, fit_from: int = 0) -> Path:
    """Held-out τ against supervised training tokens (log axis) with the log-linear fit of
    evals[fit_from:], the τ each variant needs for the goal (dotted lines) and the τ it reached
    on the benchmark (markers at the final token count). The fit is drawn a second time shifted
    down by the first variant's gap (held-out τ at the end − τ reached), to where it meets the
    τ needed: benchmark prompts are further from the training data than held-out ones."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    evals = [e for e in evals if e["tokens"] > 0]
    x = np.array([e["tokens"] for e in evals], dtype=float)
    y = np.array([e["tau"] for e in evals], dtype=float)
    ax.plot(x, y, "o-", color="k", label=f"held-out τ (γ={evals[0]['gamma']})")
    a, b = _log_fit(x[fit_from:], y[fit_from:])
    gap = y[-1] - next(iter(reached.values())) if reached else 0.0
    top = max([*needed.values(), *y]) + gap
    end = tokens_for_tau(x[fit_from:], y[fit_from:], top) or x[-1]
    grid = np.geomspace(x[fit_from], max(end, x[-1]), 50)
    ax.plot(grid, a + b * np.log10(grid), "--", color="grey",
            label=f"fit: τ = {a:.2f} + {b:.3f}·log10(tokens)")
    if gap:
        ax.plot(grid, a - gap + b * np.log10(grid), "-.", color="grey",
                label=f"fit − {gap:.2f} (held-out → benchmark gap)")
    for i, (name, tau) in enumerate(needed.items()):
        color = f"C{i}"
        ax.axhline(tau, ls=":", color=color, label=f"{name}: τ needed {tau:.2f}")
        if name in reached:
            ax.plot([x[-1]], [reached[name]], "s", color=color,
                    label=f"{name}: τ reached {reached[name]:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("supervised training tokens")
    ax.set_ylabel("τ (tokens per verify)")
    ax.set_title("τ needed against τ reached against training tokens")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
