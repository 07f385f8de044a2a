"""Vocabulary commands: count, merge, flops, optimize, mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from draftvocab.cli.common import (
    ColumnsOpt,
    ConfigOpt,
    DataArg,
    EotOpt,
    JsonOpt,
    KwargsOpt,
    LeadingOpt,
    PresetOpt,
    RoleMapOpt,
    SamplesOpt,
    SeedOpt,
    SkipOpt,
    SuperviseOpt,
    TemplateOpt,
    TokenizerOpt,
    WorkersOpt,
    _emit_json,
    _fail_cleanly,
    _flops_table,
    _measure,
    _progress,
    _Setup,
    _setup,
    _spans,
    app,
    console,
    err,
)
from draftvocab.core.errors import DraftVocabError


def _count(s: _Setup, *, max_samples: int | None, seed: int, columns: str | None,
           role_map: list[str] | None, skip_bad_lines: bool, include_eot: bool,
           workers: int | None, quiet: bool, supervise: str = "generated",
           leading: str = "drop"):
    from draftvocab.chat.conversations import ColumnMap, parse_role_map, read_conversations
    from draftvocab.core.assets import config_vocab_size
    from draftvocab.vocab.counts import count_tokens, merge_counts

    vocab = config_vocab_size(s.config, str(s.config_path))
    spans = _spans(s, include_eot=include_eot, supervise=supervise, leading=leading)
    parts = []
    for source in s.data:
        reader = read_conversations(
            source, columns=ColumnMap.parse(columns) if columns else None,
            role_map=parse_role_map(role_map) if role_map else None,
            skip_bad_lines=skip_bad_lines or s.skip_bad_lines,
            max_samples=max_samples, seed=seed,
        )
        with _progress("counting", max_samples, quiet) as bar:
            parts.append(count_tokens(reader, spans, vocab, workers=workers, progress=bar,
                                      dataset_fingerprint=reader.fingerprint()))
    return parts[0] if len(parts) == 1 else merge_counts(parts)


def _count_on_engine(s: _Setup, engine: str, *, columns: str | None,
                     role_map: list[str] | None, include_eot: bool, workers: int | None,
                     max_samples: int | None, supervise: str = "generated",
                     leading: str = "drop"):
    from draftvocab.chat.conversations import ColumnMap, parse_role_map
    from draftvocab.core.assets import config_vocab_size
    from draftvocab.vocab.scaleout import ENGINES, count_with_datasets, count_with_ray

    if engine not in ENGINES:
        raise DraftVocabError(f"--engine must be local, {', '.join(ENGINES)}; got {engine!r}")
    if max_samples is not None:
        raise DraftVocabError("--max-samples works with --engine local only")
    files: list[str] = []
    for source in s.data:
        p = Path(source)
        if p.is_dir():
            files += sorted(str(f) for f in p.rglob("*")
                            if f.suffix in (".jsonl", ".json", ".parquet"))
        elif p.is_file():
            files.append(str(p))
        else:
            raise DraftVocabError(f"dataset not found: {source}")
    vocab = config_vocab_size(s.config, str(s.config_path))
    spans = _spans(s, include_eot=include_eot, supervise=supervise, leading=leading)
    kwargs = {"columns": ColumnMap.parse(columns) if columns else None,
              "role_map": parse_role_map(role_map) if role_map else None}
    with err.status(f"counting on {engine}"):
        if engine == "datasets":
            return count_with_datasets(files, spans, vocab, num_proc=workers, **kwargs)
        import os

        return count_with_ray(files, spans, vocab, address=os.environ.get("RAY_ADDRESS"),
                              **kwargs)


def _counts_summary(c) -> dict[str, Any]:
    m = c.metadata
    return {"vocab_size": c.vocab_size, "conversations": m.get("conversations"),
            "supervised_tokens": c.total,
            "distinct_tokens": int((c.counts > 0).sum()), "skipped": m.get("skipped"),
            "skipped_examples": m.get("skipped_examples"),
            "supervise": m.get("supervise"), "leading_assistant": m.get("leading_assistant"),
            "template_kwargs": m.get("template_kwargs"),
            "left_out": m.get("left_out"), "turn_notes": m.get("turn_notes"),
            "dropped_fields": m.get("dropped_fields"),
            "tokenizer": m.get("tokenizer"), "chat_template": m.get("chat_template")}


def _print_counting_notes(summary: dict[str, Any]) -> None:
    """What a human should know about a count: skips (with the first case), left-out turns,
    turns the template does not render whole, fields the reader did not use."""
    if summary.get("skipped"):
        err.print(f"skipped: {summary['skipped']}")
        for reason, example in (summary.get("skipped_examples") or {}).items():
            err.print(f"  first {reason}: {escape(example)}", highlight=False)
    left = summary.get("left_out") or {}
    if left.get("turns"):
        err.print(f"left out {left['turns']:,} leading assistant turns that answer no prompt "
                  f"(~{left.get('tokens', 0):,} tokens; --leading-assistant keep counts them)")
    if summary.get("turn_notes"):
        err.print(f"[yellow]turns the chat template does not render whole (not counted):"
                  f"[/yellow] {summary['turn_notes']}")
    if summary.get("dropped_fields"):
        err.print(f"fields not read: {summary['dropped_fields']}")


@app.command(epilog="Examples:\n\n"
             "  draftvocab count --out counts.safetensors            # preset llama3.1-8b\n\n"
             "  draftvocab count chats.jsonl --tokenizer tok/ --config config.json "
             "--max-samples 50000 --out counts.safetensors\n\n"
             "  draftvocab count agent.jsonl --tokenizer qwen3/ --config qwen3/config.json "
             "--template-kwargs '{\"enable_thinking\": true}' --json   # reasoning, tools\n\n"
             "  draftvocab count chats.jsonl ... --supervise content --leading-assistant keep"
             "   # the previous rule")
@_fail_cleanly
def count(
    data: DataArg = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Counts file to write.")] = Path(
        "counts.safetensors"),
    preset: PresetOpt = None, tokenizer: TokenizerOpt = None, chat_template: TemplateOpt = None,
    config: ConfigOpt = None, max_samples: SamplesOpt = None, seed: SeedOpt = 0,
    columns: ColumnsOpt = None, role_map: RoleMapOpt = None, skip_bad_lines: SkipOpt = False,
    eot: EotOpt = True, workers: WorkersOpt = None, template_kwargs: KwargsOpt = None,
    supervise: SuperviseOpt = "generated", leading_assistant: LeadingOpt = "drop",
    engine: Annotated[str, typer.Option(
        "--engine", help="local (built-in process pool), datasets (read by HF datasets, "
        "counted in --workers processes) or ray (Ray Data; `pip install 'draftvocab[ray]'`, "
        "RAY_ADDRESS for a cluster).")] = "local",
    as_json: JsonOpt = False,
) -> None:
    """Count the tokens the target generates for each assistant turn (reasoning and tool calls
    included) -> counts.safetensors."""
    from draftvocab.core.atomic import check_output_file

    check_output_file(out)  # before any work: a bad output path costs nothing
    s = _setup(preset, config, tokenizer, chat_template, data, template_kwargs=template_kwargs)
    rule = {"supervise": supervise, "leading": leading_assistant}
    if engine == "local":
        c = _count(s, max_samples=max_samples, seed=seed, columns=columns, role_map=role_map,
                   skip_bad_lines=skip_bad_lines, include_eot=eot, workers=workers,
                   quiet=as_json, **rule)
    else:
        c = _count_on_engine(s, engine, columns=columns, role_map=role_map, include_eot=eot,
                             workers=workers, max_samples=max_samples, **rule)
    c.save(out)
    summary = {**_counts_summary(c), "out": str(out)}
    if as_json:
        _emit_json(summary)
    else:
        err.print(f"counted {summary['conversations']:,} conversations, "
                  f"{summary['supervised_tokens']:,} supervised tokens "
                  f"({summary['distinct_tokens']:,} distinct) -> "
                  f"[bold]{escape(str(out))}[/bold]")
        _print_counting_notes(summary)


@app.command(epilog="Example:\n\n  draftvocab merge shard-*.safetensors --out counts.safetensors")
@_fail_cleanly
def merge(
    parts: Annotated[list[Path], typer.Argument(help="Counts files to sum.")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("counts.safetensors"),
    as_json: JsonOpt = False,
) -> None:
    """Merge counts from several shards (same tokenizer, template and V)."""
    from draftvocab.core.atomic import check_output_file
    from draftvocab.vocab.counts import TokenCounts, merge_counts

    check_output_file(out)
    c = merge_counts([TokenCounts.load(p) for p in parts])
    c.save(out)
    summary = {**_counts_summary(c), "out": str(out), "parts": [str(p) for p in parts]}
    if as_json:
        _emit_json(summary)
    else:
        err.print(f"merged {len(parts)} files: {c.total:,} supervised tokens -> {escape(str(out))}")


@app.command(epilog="Examples:\n\n  draftvocab flops                       # Llama-3.1-8B\n\n"
             "  draftvocab flops path/to/config.json --k 32000 --json")
@_fail_cleanly
def flops(
    config_path: Annotated[Path | None, typer.Argument(
        metavar="[CONFIG]", help="Target HF config.json (default: the preset's).")] = None,
    preset: PresetOpt = None,
    k: Annotated[int | None, typer.Option("--k", help="Also show the draft at vocab size k.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-token FLOPs of the EAGLE-3 draft, per component (the paper's Table 1)."""
    from draftvocab.vocab.flops import flops_breakdown

    s = _setup(preset, config_path, need_tokenizer=False)
    f = flops_breakdown(s.config_path)  # path: errors name the file
    if k is not None and not 1 <= k <= f.vocab_size:
        raise DraftVocabError(f"k must be in [1, V={f.vocab_size}], got {k}")
    if as_json:
        rows = [{"component": n, "flops": v, "fraction": fr} for n, v, fr in f.rows(k)]
        extra = {"k": k, "latency_reduction": float(f.latency_reduction(k))} if k else {}
        _emit_json({**f.to_json(), "rows": rows, **extra})
        return
    console.print(_flops_table(f, None))
    if k:
        console.print(_flops_table(f, k))
        console.print(f"R(k={k:,}) = {float(f.latency_reduction(k)):.4f}")


def _result_table(res) -> Table:
    t = Table(title=f"k* (alpha={res.alpha:g}, c_min={res.c_min:g}, "
              f"k in [{res.k_min:,}, {res.k_max:,}])")
    for col in ("solver", "k*", "coverage C", "reduction R", "utility U", "seconds"):
        t.add_column(col, justify="right")
    for r in (res.exact, res.tpe):
        if r is not None:
            t.add_row(r.solver, f"{r.k:,}", f"{r.coverage:.4f}", f"{r.reduction:.4f}",
                      f"{r.utility:.5f}", f"{r.seconds:.4f}")
    return t


def _read_latency(path: Path, vocab: int) -> dict:
    if not path.is_file():
        raise DraftVocabError(f"--latency is flops, measured or a latency.json; {path} not found")
    try:
        data = json.loads(path.read_text())
        ok = {"ks", "seconds", "vocab_size"} <= data.keys() and len(data["ks"]) >= 2
    except (json.JSONDecodeError, AttributeError):
        ok = False
    if not ok:
        raise DraftVocabError(f"{path} is not a latency.json from `draftvocab latency`")
    if int(data["vocab_size"]) != vocab:
        raise DraftVocabError(f"{path} was measured for V={data['vocab_size']}, this target "
                              f"has V={vocab}")
    return data


def _read_calibration(calibration: Path | None, vocab: int) -> dict:
    if calibration is None or not calibration.is_file():
        raise DraftVocabError("--objective speedup needs --calibration FILE (from `draftvocab "
                              "calibrate DRAFT`)")
    try:
        cal = json.loads(calibration.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DraftVocabError(f"{calibration} is not a calibration file: {exc}") from None
    keys = ("vocab_size", "t_verify_seconds", "alphas", "draft_vocab_size")
    if not isinstance(cal, dict) or any(k not in cal for k in keys):
        raise DraftVocabError(f"{calibration} is not a calibration file from `draftvocab "
                              f"calibrate` (needs {', '.join(keys)})")
    if cal.get("vocab_size") != vocab:
        raise DraftVocabError(f"{calibration} is for V={cal.get('vocab_size')}, the target has "
                              f"V={vocab}")
    return cal


def _optimize_speedup(s, c, f, model, latency_json, cal, k_min, k_max, out_dir,
                      counts_path, as_json) -> None:
    """k* = argmax of predicted tokens/s over every k; writes the run directory."""
    import numpy as np

    from draftvocab.analysis.plots import plot_speed
    from draftvocab.core.atomic import atomic_directory
    from draftvocab.engine.latency import predict_speed
    from draftvocab.vocab.mapping import build_mapping, write_mapping_files
    from draftvocab.vocab.objective import coverage_curve

    vocab = f.vocab_size
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
                          str(counts_path) if counts_path else None},
               "supervised_tokens": c.total}
    grid = np.unique(np.geomspace(1, vocab, 2000).astype(int))
    with atomic_directory(out_dir) as tmp:
        c.save(tmp / "counts.safetensors")
        decode = (lambda ids: s.tokenizer.convert_ids_to_tokens(ids)) if s.tokenizer else None
        write_mapping_files(tmp, build_mapping(c.counts, k_best), counts=c.counts, decode=decode)
        (tmp / "latency.json").write_text(json.dumps(latency_json, indent=2) + "\n")
        plot_speed(grid, pred["tokens_per_s"][grid - 1], k_best, tmp / "speed.png",
                   plain=cal.get("plain_tokens_per_s"))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        _emit_json(summary | {"out": str(out_dir)})
        return
    console.print(f"[bold green]k* = {k_best:,}[/bold green] of V = {vocab:,} by predicted "
                  f"speed: {summary['predicted_tokens_per_s']:.1f} tok/s (τ "
                  f"{summary['predicted_accept_length']:.2f}, C = {summary['coverage']:.4f}); "
                  f"full vocabulary {summary['predicted_full_vocab_tokens_per_s']:.1f} tok/s "
                  f"-> [bold]{escape(str(out_dir))}[/bold]")


@app.command(epilog="Examples:\n\n"
             "  draftvocab optimize                                  # the paper's setting, "
             "offline\n\n"
             "  draftvocab optimize --preset smollm2-135m --alpha 0.6 --c-min 0.95\n\n"
             "  draftvocab optimize --counts counts.safetensors --config config.json "
             "--solver tpe --trials 200 --out run/\n\n"
             "  draftvocab optimize chats.jsonl --tokenizer tok/ --config config.json --json")
@_fail_cleanly
def optimize(
    data: DataArg = None,
    counts: Annotated[Path | None, typer.Option(
        "--counts", help="Use a counts file instead of counting a dataset.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run directory (default: draftvocab-out/<preset or 'run'>).")] = None,
    preset: PresetOpt = None, tokenizer: TokenizerOpt = None, chat_template: TemplateOpt = None,
    config: ConfigOpt = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Coverage weight in U(k).")] = 0.5,
    c_min: Annotated[float, typer.Option("--c-min", help="Minimum coverage C(k).")] = 0.9,
    k_min: Annotated[int, typer.Option("--k-min")] = 1,
    k_max: Annotated[int | None, typer.Option("--k-max", help="Default: V.")] = None,
    solver: Annotated[str, typer.Option(
        "--solver", help="exact | tpe | both (k* from exact, TPE's regret reported).")] = "both",
    trials: Annotated[int, typer.Option("--trials", help="TPE trials (paper: 100).")] = 100,
    seed: SeedOpt = 0, max_samples: SamplesOpt = None, columns: ColumnsOpt = None,
    role_map: RoleMapOpt = None, skip_bad_lines: SkipOpt = False, eot: EotOpt = True,
    workers: WorkersOpt = None, template_kwargs: KwargsOpt = None,
    supervise: SuperviseOpt = "generated", leading_assistant: LeadingOpt = "drop",
    plots: Annotated[bool, typer.Option("--plots/--no-plots")] = True,
    latency: Annotated[str, typer.Option(
        "--latency", help="R(k) from: flops (the paper), measured (time draft forwards now, "
        "on the CPU), or a latency.json written by `draftvocab latency`.")] = "flops",
    objective_name: Annotated[str, typer.Option(
        "--objective", help="utility (the paper: α·C + (1−α)·R under c_min) or speedup "
        "(predicted tokens/s, every k, no α or c_min; needs --calibration).")] = "utility",
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="calibration.json from `draftvocab calibrate` (speedup).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Choose the draft vocabulary size k* and write the mapping, plots and summary."""
    from draftvocab.analysis.artefacts import write_run
    from draftvocab.core.assets import sha256_text
    from draftvocab.core.atomic import check_output_dir
    from draftvocab.vocab.counts import TokenCounts
    from draftvocab.vocab.flops import flops_breakdown
    from draftvocab.vocab.objective import make_objective, utility_curve
    from draftvocab.vocab.optimize import optimize_objective

    # Everything is checked before any expensive counting or measuring.
    if counts is not None and data:
        raise DraftVocabError("give either DATA or --counts, not both")
    if objective_name not in ("utility", "speedup"):
        raise DraftVocabError(f"--objective must be utility or speedup, got {objective_name!r}")
    if solver not in ("exact", "tpe", "both"):
        raise DraftVocabError(f"--solver must be exact, tpe or both, got {solver!r}")
    if trials < 1:
        raise DraftVocabError(f"--trials must be at least 1, got {trials}")
    utility_curve(*([__import__("numpy").zeros(1)] * 2), alpha, c_min)
    # A counts file carries its token strings: no tokenizer needed unless one is given.
    s = _setup(preset, config, tokenizer, chat_template, data,
               need_tokenizer=counts is None or tokenizer is not None or config is None,
               template_kwargs=template_kwargs)
    f = flops_breakdown(s.config_path)  # path: errors name the file
    if not 1 <= k_min <= (k_max or f.vocab_size) <= f.vocab_size:
        raise DraftVocabError(f"k must be in [1, V={f.vocab_size}] with --k-min <= --k-max, "
                              f"got --k-min {k_min}, --k-max {k_max}")
    latency_json = None
    if latency not in ("flops", "measured"):
        latency_json = _read_latency(Path(latency), f.vocab_size)
    cal = _read_calibration(calibration, f.vocab_size) if objective_name == "speedup" else None
    name = s.preset.name if s.preset is not None and not (tokenizer or config) else "run"
    out_dir = check_output_dir(out or Path("draftvocab-out") / name)
    if counts is not None:
        c = TokenCounts.load(counts)
    else:
        c = _count(s, max_samples=max_samples, seed=seed, columns=columns, role_map=role_map,
                   skip_bad_lines=skip_bad_lines, include_eot=eot, workers=workers,
                   quiet=as_json, supervise=supervise, leading=leading_assistant)
    if c.vocab_size != f.vocab_size:
        raise DraftVocabError(f"the counts are over V={c.vocab_size:,} but {s.config_path} has "
                              f"vocab_size {f.vocab_size:,}: they belong to another model")
    model = None
    if latency == "measured" or (objective_name == "speedup" and latency == "flops"):
        from draftvocab.engine.latency import default_grid

        latency_json = _measure(s.config, default_grid(f.vocab_size), 1, 256, 20, "cpu",
                                as_json)
    if latency_json is not None:
        from draftvocab.engine.latency import LatencyModel

        model = LatencyModel.from_json(latency_json)
    if objective_name == "speedup":
        _optimize_speedup(s, c, f, model, latency_json, cal, k_min, k_max, out_dir,
                          counts, as_json)
        return
    objective = make_objective(c.counts, f, alpha, c_min)
    if model is not None:
        from draftvocab.vocab.objective import Objective

        objective = Objective(coverage=objective.coverage, reduction=model.reduction(),
                              alpha=alpha, c_min=c_min)
    bar = None
    if solver in ("tpe", "both") and not as_json:
        from rich.progress import Progress
        bar = Progress(console=err, transient=True)
        task = bar.add_task("TPE trials", total=trials)
        bar.start()
    try:
        res = optimize_objective(
            objective, k_min=k_min, k_max=k_max, solver=solver, n_trials=trials, seed=seed,
            progress=(lambda done, total: bar.update(task, completed=done)) if bar else None)
    finally:
        if bar:
            bar.stop()
    inputs = {"preset": getattr(s.preset, "name", None), "config": str(s.config_path),
              "config_sha256": sha256_text(json.dumps(s.config, sort_keys=True)),
              "counts_file": str(counts) if counts else None,
              "latency": "flops" if model is None else latency}
    decode = (lambda ids: s.tokenizer.convert_ids_to_tokens(ids)) if s.tokenizer else \
        c.token_strings
    extra = {"latency.json": json.dumps(latency_json, indent=2) + "\n"} if latency_json else {}
    out_dir, summary = write_run(out_dir, counts=c, flops=f, objective=objective, result=res,
                                 inputs=inputs, decode=decode, plots=plots, extra_files=extra)
    if as_json:
        _emit_json({**summary, "out": str(out_dir)})
        return
    console.print(_flops_table(f, res.chosen.k))
    console.print(_result_table(res))
    regret = f", TPE regret {res.tpe_regret:.2e}" if res.tpe_regret is not None else ""
    console.print(f"[bold green]k* = {res.chosen.k:,}[/bold green] of V = {res.vocab_size:,} "
              f"({100 * (1 - res.chosen.k / res.vocab_size):.1f}% smaller): "
              f"C = {res.chosen.coverage:.4f}, R = {res.chosen.reduction:.4f}, "
              f"U = {res.chosen.utility:.4f} \\[{res.chosen.solver}{regret}]")
    console.print(f"artefacts -> [bold]{escape(str(out_dir))}[/bold]: "
                  f"{', '.join(summary['files'])}")
    if counts is None:
        _print_counting_notes(_counts_summary(c))


@app.command(epilog="Example:\n\n  draftvocab mapping --counts counts.safetensors --k 32000 "
             "--out mapping/")
@_fail_cleanly
def mapping(
    counts: Annotated[Path, typer.Option("--counts", help="Counts file.")],
    k: Annotated[int, typer.Option("--k", help="Draft vocabulary size.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write.")] = Path(
        "mapping"),
    preset: PresetOpt = None, tokenizer: TokenizerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top-k of a counts file -> vocab_mapping.pt/.safetensors + draft_vocab.json (any k)."""
    from draftvocab.core.assets import load_tokenizer
    from draftvocab.core.atomic import atomic_directory, check_output_dir
    from draftvocab.engine.presets import get_preset
    from draftvocab.vocab.counts import TokenCounts
    from draftvocab.vocab.mapping import build_mapping, write_mapping_files
    from draftvocab.vocab.objective import coverage_curve

    check_output_dir(out)
    c = TokenCounts.load(counts)
    if not 1 <= k <= c.vocab_size:
        raise DraftVocabError(f"k must be in [1, V={c.vocab_size}], got {k}")
    tok = None
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif preset is not None:
        tok = get_preset(preset).load_tokenizer()
    coverage = float(coverage_curve(c.counts)[k])  # refuses all-zero counts: before writing
    m = build_mapping(c.counts, k)
    decode = (lambda ids: tok.convert_ids_to_tokens(ids)) if tok is not None else \
        c.token_strings
    with atomic_directory(out) as tmp:
        files = write_mapping_files(tmp, m, counts=c.counts, decode=decode)
    summary = {"k": k, "vocab_size": c.vocab_size, "coverage": coverage, "out": str(out),
               "files": sorted(p.name for p in files)}
    if as_json:
        _emit_json(summary)
    else:
        err.print(f"k = {k:,} of V = {c.vocab_size:,}, coverage {coverage:.4f} -> {escape(str(out))}")
