"""Vocabulary commands: count, merge, flops, optimize, mapping.

Each parses its options, makes one call into `draftvocab.api.vocab` / `api.optimize` and
renders the result: rich text on stderr/stdout, or its `to_json()` with --json.
"""

from __future__ import annotations

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
    _bars,
    _emit_json,
    _fail_cleanly,
    _flops_table,
    app,
    console,
    err,
)


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
    from draftvocab.api.vocab import count as count_tokens

    with _bars(as_json) as progress:
        res = count_tokens(data, out=out, preset=preset, tokenizer=tokenizer,
                           chat_template=chat_template, config=config, max_samples=max_samples,
                           seed=seed, columns=columns, role_map=role_map,
                           skip_bad_lines=skip_bad_lines, eot=eot, workers=workers,
                           template_kwargs=template_kwargs, supervise=supervise,
                           leading_assistant=leading_assistant, engine=engine,
                           progress=progress)
    summary = res.to_json()
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
    from draftvocab.api.vocab import merge as merge_counts

    res = merge_counts(parts, out)
    if as_json:
        _emit_json(res.to_json())
    else:
        err.print(f"merged {len(parts)} files: {res.counts.total:,} supervised tokens -> "
                  f"{escape(str(out))}")


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
    from draftvocab.api.vocab import flops as draft_flops

    report = draft_flops(config_path, preset=preset, k=k)
    if as_json:
        _emit_json(report.to_json())
        return
    console.print(_flops_table(report.flops, None))
    if k:
        console.print(_flops_table(report.flops, k))
        console.print(f"R(k={k:,}) = {float(report.flops.latency_reduction(k)):.4f}")


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
    from draftvocab.api.optimize import optimize as choose_k
    from draftvocab.api.vocab import counts_summary

    with _bars(as_json) as progress:
        run = choose_k(data, counts=counts, out=out, preset=preset, tokenizer=tokenizer,
                       chat_template=chat_template, config=config, alpha=alpha, c_min=c_min,
                       k_min=k_min, k_max=k_max, solver=solver, trials=trials, seed=seed,
                       max_samples=max_samples, columns=columns, role_map=role_map,
                       skip_bad_lines=skip_bad_lines, eot=eot, workers=workers,
                       template_kwargs=template_kwargs, supervise=supervise,
                       leading_assistant=leading_assistant, plots=plots, latency=latency,
                       objective=objective_name, calibration=calibration, progress=progress)
    if as_json:
        _emit_json(run.to_json())
    elif run.objective == "speedup":
        sm = run.summary
        console.print(f"[bold green]k* = {run.k:,}[/bold green] of V = {sm['vocab_size']:,} by "
                      f"predicted speed: {sm['predicted_tokens_per_s']:.1f} tok/s (τ "
                      f"{sm['predicted_accept_length']:.2f}, C = {sm['coverage']:.4f}); "
                      f"full vocabulary {sm['predicted_full_vocab_tokens_per_s']:.1f} tok/s "
                      f"-> [bold]{escape(str(run.out))}[/bold]")
    else:
        res = run.result
        console.print(_flops_table(run.flops, res.chosen.k))
        console.print(_result_table(res))
        regret = f", TPE regret {res.tpe_regret:.2e}" if res.tpe_regret is not None else ""
        console.print(f"[bold green]k* = {res.chosen.k:,}[/bold green] of V = "
                      f"{res.vocab_size:,} ({100 * (1 - res.chosen.k / res.vocab_size):.1f}% "
                      f"smaller): C = {res.chosen.coverage:.4f}, R = {res.chosen.reduction:.4f}, "
                      f"U = {res.chosen.utility:.4f} \\[{res.chosen.solver}{regret}]")
        console.print(f"artefacts -> [bold]{escape(str(run.out))}[/bold]: "
                      f"{', '.join(run.summary['files'])}")
        if run.counted:
            _print_counting_notes(counts_summary(run.counts))


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
    from draftvocab.api.vocab import mapping as write_mapping

    res = write_mapping(counts, k, out, preset=preset, tokenizer=tokenizer)
    if as_json:
        _emit_json(res.to_json())
    else:
        err.print(f"k = {k:,} of V = {res.vocab_size:,}, coverage {res.coverage:.4f} -> "
                  f"{escape(str(out))}")
