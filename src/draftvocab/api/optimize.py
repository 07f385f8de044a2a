"""`optimize` as one library call: counts + a latency model -> k* and the run directory.

Owns the choices the command offers — the latency model R(k) (FLOPs, measured now, or a
latency.json), the objective (the paper's utility, or predicted tokens/s from a calibration)
and the solvers — and checks every parameter before any counting or measuring. The stages it
composes live in `vocab` (objective, solvers, mapping), `engine.latency` and `analysis`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from draftvocab.api.inputs import Progress, Setup, count_data, setup
from draftvocab.api.vocab import _data_list, read_calibration, read_latency
from draftvocab.core.errors import DraftVocabError


@dataclass
class OptimizeRun:
    """What `optimize` chose and wrote: the summary (summary.json), the counts and FLOPs it
    used, and for the utility objective the solvers' result."""

    objective: str  # "utility" or "speedup"
    out: Path
    summary: dict[str, Any]
    counts: Any  # TokenCounts
    flops: Any  # DraftFlops
    result: Any = None  # vocab.optimize.OptimizeResult (utility objective)
    counted: bool = False  # the counts were made from data now, not loaded

    @property
    def k(self) -> int:
        """The chosen draft vocabulary size k*."""
        return int(self.summary["k"]) if self.result is None else self.result.chosen.k

    def to_json(self) -> dict[str, Any]:
        return {**self.summary, "out": str(self.out)}


def _check(counts, data, objective: str, solver: str, trials: int, alpha: float,
           c_min: float) -> None:
    from draftvocab.vocab.objective import check_weights

    if counts is not None and data:
        raise DraftVocabError("give either DATA or --counts, not both")
    if objective not in ("utility", "speedup"):
        raise DraftVocabError(f"--objective must be utility or speedup, got {objective!r}")
    if solver not in ("exact", "tpe", "both"):
        raise DraftVocabError(f"--solver must be exact, tpe or both, got {solver!r}")
    if trials < 1:
        raise DraftVocabError(f"--trials must be at least 1, got {trials}")
    check_weights(alpha, c_min)


def _file(counts) -> str | None:
    """The counts file named in summary.json (None when counted now or given in memory)."""
    return str(counts) if isinstance(counts, str | Path) else None


def _measured(config: dict, vocab: int, progress: Progress | None) -> dict:
    """Time draft forwards on the CPU now, over the default grid of k."""
    from draftvocab.engine.latency import default_grid, measure_latency

    ks = default_grid(vocab)
    if progress:
        progress("timing draft forwards", 0, len(ks))
    return measure_latency(config, ks, width=1, prefix=256, repeats=20, device="cpu",
                           progress=(lambda n: progress("timing draft forwards", n))
                           if progress else None)


def optimize(data: str | Path | list | None = None, *, counts: Path | Any = None,
             out: Path | None = None, preset: str | None = None, tokenizer: Path | None = None,
             chat_template: Path | None = None, config: Path | None = None,
             alpha: float = 0.5, c_min: float = 0.9, k_min: int = 1, k_max: int | None = None,
             solver: str = "both", trials: int = 100, seed: int = 0,
             max_samples: int | None = None, columns: str | None = None,
             role_map: list[str] | None = None, skip_bad_lines: bool = False,
             eot: bool = True, workers: int | None = None, template_kwargs: str | None = None,
             supervise: str = "generated", leading_assistant: str = "drop",
             plots: bool = True, latency: str = "flops", objective: str = "utility",
             calibration: Path | None = None,
             progress: Progress | None = None) -> OptimizeRun:
    """Choose the draft vocabulary size k* from the data's token counts (or `counts`: a
    counts file or a TokenCounts) and write the run directory — counts, d2t/t2d mapping,
    plots, summary.json — to `out` (default: draftvocab-out/<preset or 'run'>).

    Example:
        >>> from draftvocab import optimize
        >>> run = optimize(preset="smollm2-135m", max_samples=200, solver="exact",
        ...                out="/tmp/smol-run", plots=False)
        >>> run.k, round(run.summary["coverage"], 2)  # doctest: +SKIP
        (5612, 0.93)
    """
    from draftvocab.core.atomic import check_output_dir
    from draftvocab.vocab.counts import TokenCounts
    from draftvocab.vocab.flops import flops_breakdown

    # Everything is checked before any expensive counting or measuring.
    data = _data_list(data)
    _check(counts, data, objective, solver, trials, alpha, c_min)
    # A counts file carries its token strings: no tokenizer needed unless one is given.
    s = setup(preset, config, tokenizer, chat_template, data,
              need_tokenizer=counts is None or tokenizer is not None or config is None,
              template_kwargs=template_kwargs)
    f = flops_breakdown(s.config_path)  # path: errors name the file
    if not 1 <= k_min <= (k_max or f.vocab_size) <= f.vocab_size:
        raise DraftVocabError(f"k must be in [1, V={f.vocab_size}] with --k-min <= --k-max, "
                              f"got --k-min {k_min}, --k-max {k_max}")
    latency_json = None
    if latency not in ("flops", "measured"):
        latency_json = read_latency(Path(latency), f.vocab_size)
    cal = read_calibration(calibration, f.vocab_size) if objective == "speedup" else None
    name = s.preset.name if s.preset is not None and not (tokenizer or config) else "run"
    out_dir = check_output_dir(Path(out) if out else Path("draftvocab-out") / name)
    if isinstance(counts, str | Path):
        c = TokenCounts.load(counts)
    elif counts is not None:
        c = counts  # already counted
    else:
        c = count_data(s, max_samples=max_samples, seed=seed, columns=columns,
                       role_map=role_map, skip_bad_lines=skip_bad_lines, include_eot=eot,
                       workers=workers, progress=progress, supervise=supervise,
                       leading=leading_assistant)
    if c.vocab_size != f.vocab_size:
        raise DraftVocabError(f"the counts are over V={c.vocab_size:,} but {s.config_path} has "
                              f"vocab_size {f.vocab_size:,}: they belong to another model")
    if latency == "measured" or (objective == "speedup" and latency == "flops"):
        latency_json = _measured(s.config, f.vocab_size, progress)
    run = OptimizeRun(objective, out_dir, {}, c, f, counted=counts is None)
    if objective == "speedup":
        run.summary = _write_speedup(s, run, latency_json, cal, k_min, k_max, counts)
        return run
    _write_utility(s, run, latency_json, latency, alpha=alpha, c_min=c_min, k_min=k_min,
                   k_max=k_max, solver=solver, trials=trials, seed=seed, plots=plots,
                   counts_path=counts, progress=progress)
    return run


def _write_utility(s: Setup, run: OptimizeRun, latency_json: dict | None, latency: str, *,
                   alpha: float, c_min: float, k_min: int, k_max: int | None, solver: str,
                   trials: int, seed: int, plots: bool, counts_path: Path | None,
                   progress: Progress | None) -> None:
    """k* = argmax of the paper's utility (R(k) from FLOPs or a latency model)."""
    from draftvocab.analysis.artefacts import write_run
    from draftvocab.core.assets import sha256_text
    from draftvocab.engine.latency import LatencyModel
    from draftvocab.vocab.objective import Objective, make_objective
    from draftvocab.vocab.optimize import optimize_objective

    c = run.counts
    objective = make_objective(c.counts, run.flops, alpha, c_min)
    if latency_json is not None:
        reduction = LatencyModel.from_json(latency_json).reduction()
        objective = Objective(coverage=objective.coverage, reduction=reduction,
                              alpha=alpha, c_min=c_min)
    done = [0]

    def trials_done(n: int, total: int) -> None:
        if progress and n > done[0]:
            progress("TPE trials", n - done[0], total)
            done[0] = n

    if progress and solver in ("tpe", "both"):
        progress("TPE trials", 0, trials)
    res = optimize_objective(objective, k_min=k_min, k_max=k_max, solver=solver,
                             n_trials=trials, seed=seed, progress=trials_done)
    inputs = {"preset": getattr(s.preset, "name", None), "config": str(s.config_path),
              "config_sha256": sha256_text(json.dumps(s.config, sort_keys=True)),
              "counts_file": _file(counts_path),
              "latency": "flops" if latency_json is None else latency}
    decode = (lambda ids: s.tokenizer.convert_ids_to_tokens(ids)) if s.tokenizer else \
        c.token_strings
    extra = {"latency.json": json.dumps(latency_json, indent=2) + "\n"} if latency_json else {}
    run.out, run.summary = write_run(run.out, counts=c, flops=run.flops, objective=objective,
                                     result=res, inputs=inputs, decode=decode, plots=plots,
                                     extra_files=extra)
    run.result = res


def _write_speedup(s: Setup, run: OptimizeRun, latency_json: dict, cal: dict, k_min: int,
                   k_max: int | None, counts_path: Path | None) -> dict:
    """k* = argmax of predicted tokens/s over every k; writes the run directory."""
    import numpy as np

    from draftvocab.analysis.plots import plot_speed
    from draftvocab.core.atomic import atomic_directory
    from draftvocab.engine.latency import LatencyModel, predict_speed
    from draftvocab.vocab.mapping import build_mapping, write_mapping_files
    from draftvocab.vocab.objective import coverage_curve

    c, vocab, model = run.counts, run.flops.vocab_size, LatencyModel.from_json(latency_json)
    k_max = k_max or vocab
    if not 1 <= k_min <= k_max <= vocab:
        raise DraftVocabError(f"need 1 <= k_min <= k_max <= V={vocab}")
    coverage = coverage_curve(c.counts)
    ks = np.arange(1, vocab + 1)
    pred = predict_speed(coverage[1:], model(ks), cal["t_verify_seconds"], cal["alphas"],
                         float(coverage[cal["draft_vocab_size"]]))
    window = slice(k_min - 1, k_max)
    k_best = int(ks[window][np.argmax(pred["tokens_per_s"][window])])
    summary = {"objective": "speedup", "k": k_best, "vocab_size": vocab,
               "coverage": float(coverage[k_best]),
               "predicted_tokens_per_s": float(pred["tokens_per_s"][k_best - 1]),
               "predicted_accept_length": float(pred["tau"][k_best - 1]),
               "predicted_full_vocab_tokens_per_s": float(pred["tokens_per_s"][-1]),
               "predicted_end_to_end_tokens_per_s": float(
                   1 / (1 / pred["tokens_per_s"][k_best - 1]
                        + cal.get("prefill_seconds_per_token", 0.0))),
               "draft_seconds_at_k": float(model(k_best)), "calibration": cal,
               "k_min": k_min, "k_max": k_max,
               "inputs": {"preset": getattr(s.preset, "name", None),
                          "config": str(s.config_path), "counts_file":
                          _file(counts_path)},
               "supervised_tokens": c.total}
    grid = np.unique(np.geomspace(1, vocab, 2000).astype(int))
    with atomic_directory(run.out) as tmp:
        c.save(tmp / "counts.safetensors")
        decode = (lambda ids: s.tokenizer.convert_ids_to_tokens(ids)) if s.tokenizer else None
        write_mapping_files(tmp, build_mapping(c.counts, k_best), counts=c.counts, decode=decode)
        (tmp / "latency.json").write_text(json.dumps(latency_json, indent=2) + "\n")
        plot_speed(grid, pred["tokens_per_s"][grid - 1], k_best, tmp / "speed.png",
                   plain=cal.get("plain_tokens_per_s"))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
