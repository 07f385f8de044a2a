"""Analysis commands: coverage, missing, stability, sweep, report.

Each parses its options, makes one call into `draftvocab.api.analysis` and renders the
result (its markdown on stdout, where the files went on stderr) or, with --json, `to_json()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from draftvocab.analysis.tables import md_table
from draftvocab.cli.common import (
    ConfigOpt,
    CountsOpt,
    DataArg,
    EvalLeadingOpt,
    EvalSuperviseOpt,
    GroupOpt,
    JsonOpt,
    KOpt,
    KwargsOpt,
    LeadingOpt,
    MappingOpt,
    OutDirOpt,
    PresetOpt,
    RunOpt,
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
    app,
    console,
    err,
)


@app.command("coverage", epilog="Examples:\n\n"
             "  draftvocab coverage gen.jsonl --run runs/smol-vocab --group-by category\n\n"
             "  draftvocab coverage eval/ --mapping vocab_mapping.pt --preset smollm2-135m\n\n"
             "  draftvocab coverage gen.jsonl --run RUN --group-by category "
             "--train-data train.jsonl   # + each domain's share of training tokens")
@_fail_cleanly
def coverage_cmd(
    data: DataArg = None, run: RunOpt = None, mapping: MappingOpt = None,
    counts: CountsOpt = None, k: KOpt = None, group_by: GroupOpt = None,
    train_data: Annotated[list[Path] | None, typer.Option(
        "--train-data", help="Training data labelled with the same --group-by field: adds "
        "each domain's share of the training tokens (the paper's Table 5).")] = None,
    preset: PresetOpt = None, tokenizer: TokenizerOpt = None, chat_template: TemplateOpt = None,
    config: ConfigOpt = None, out: OutDirOpt = None, workers: WorkersOpt = None,
    template_kwargs: KwargsOpt = None, supervise: EvalSuperviseOpt = None,
    leading_assistant: EvalLeadingOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Coverage of a vocabulary on evaluation data, per group and combined: tokens,
    frequency-weighted and unique-token coverage (the paper's Tables 4 and 5)."""
    from draftvocab.api.analysis import coverage

    with _bars(as_json) as progress:
        res = coverage(data, run=run, mapping=mapping, counts=counts, k=k, group_by=group_by,
                       train_data=train_data, preset=preset, tokenizer=tokenizer,
                       chat_template=chat_template, config=config, out=out, workers=workers,
                       template_kwargs=template_kwargs, supervise=supervise,
                       leading_assistant=leading_assistant, progress=progress)
    if as_json:
        _emit_json(res.to_json())
        return
    console.print(res.markdown, markup=False, highlight=False)
    err.print(f"-> {escape(str(res.out))}/coverage.json, coverage.md")


@app.command("missing", epilog="Examples:\n\n"
             "  draftvocab missing gen.jsonl --run runs/smol-vocab --group-by category --top 15")
@_fail_cleanly
def missing_cmd(
    data: DataArg = None, run: RunOpt = None, mapping: MappingOpt = None,
    counts: CountsOpt = None, k: KOpt = None, group_by: GroupOpt = None,
    top: Annotated[int, typer.Option("--top", help="Tokens listed per set.")] = 20,
    preset: PresetOpt = None, tokenizer: TokenizerOpt = None, chat_template: TemplateOpt = None,
    config: ConfigOpt = None, out: OutDirOpt = None, workers: WorkersOpt = None,
    template_kwargs: KwargsOpt = None, supervise: EvalSuperviseOpt = None,
    leading_assistant: EvalLeadingOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The most frequent evaluation tokens the vocabulary cannot emit, per set, with their
    decoded text and counts: what trimming loses."""
    from draftvocab.api.analysis import missing

    with _bars(as_json) as progress:
        res = missing(data, run=run, mapping=mapping, counts=counts, k=k, group_by=group_by,
                      top=top, preset=preset, tokenizer=tokenizer, chat_template=chat_template,
                      config=config, out=out, workers=workers, template_kwargs=template_kwargs,
                      supervise=supervise, leading_assistant=leading_assistant,
                      progress=progress)
    if as_json:
        _emit_json(res.to_json())
        return
    console.print(res.markdown, markup=False, highlight=False)
    err.print(f"-> {escape(str(res.out))}/missing.json, missing.md")


@app.command("stability", epilog="Examples:\n\n"
             "  draftvocab stability --preset smollm2-135m -o runs/stability\n\n"
             "  draftvocab stability chats.jsonl --tokenizer tok/ --config config.json "
             "--sizes 1000,5000,20000 --repeats 10")
@_fail_cleanly
def stability_cmd(
    data: DataArg = None, preset: PresetOpt = None, tokenizer: TokenizerOpt = None,
    chat_template: TemplateOpt = None, config: ConfigOpt = None,
    sizes: Annotated[str | None, typer.Option(
        "--sizes", help="Comma-separated sample sizes (default 1k, 2k, 5k, 10k, 25k, … all).")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Random subsets per size.")] = 5,
    alpha: Annotated[float, typer.Option("--alpha")] = 0.5,
    c_min: Annotated[float, typer.Option("--c-min")] = 0.9,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Stable = within this "
                                              "fraction of k* on all data.")] = 0.02,
    max_samples: SamplesOpt = None, seed: SeedOpt = 0, skip_bad_lines: SkipOpt = False,
    workers: WorkersOpt = None, template_kwargs: KwargsOpt = None,
    supervise: SuperviseOpt = "generated", leading_assistant: LeadingOpt = "drop",
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Directory for stability.json and .png (e.g. RUN/analysis).")
    ] = Path("analysis"),
    as_json: JsonOpt = False,
) -> None:
    """k* as a function of the number of training conversations (several random subsets per
    size): mean, spread, and the sample size after which k* stays within 2 % (paper's Fig. 3)."""
    from draftvocab.api.analysis import stability

    with _bars(as_json) as progress:
        res = stability(data, preset=preset, tokenizer=tokenizer, chat_template=chat_template,
                        config=config, sizes=sizes, repeats=repeats, alpha=alpha, c_min=c_min,
                        tolerance=tolerance, max_samples=max_samples, seed=seed,
                        skip_bad_lines=skip_bad_lines, workers=workers,
                        template_kwargs=template_kwargs, supervise=supervise,
                        leading_assistant=leading_assistant, out=out, progress=progress)
    if as_json:
        _emit_json(res.to_json())
        return
    result = res.result
    rows = [[f"{p['size']:,}", f"{p['mean']:,.0f}", f"{p['std']:,.0f}", f"{p['min']:,}",
             f"{p['max']:,}"] for p in result["points"]]
    console.print(md_table(["conversations", "mean k*", "std", "min", "max"], rows),
                  markup=False, highlight=False)
    stable = result["stable_from"]
    err.print(f"k* on all {result['conversations']:,} conversations: {result['reference_k']:,}; "
              + (f"within ±{tolerance:.0%} from {stable:,} conversations on"
                 if stable else "not stable within the sizes tried")
              + f" -> {escape(str(res.out))}/stability.json, stability.png")


@app.command("sweep", epilog="Examples:\n\n"
             "  draftvocab sweep --run runs/smol-vocab\n\n"
             "  draftvocab sweep --counts counts.safetensors --preset llama3.1-8b "
             "--alphas 0.2,0.5,0.8 --c-mins 0.85,0.9,0.95")
@_fail_cleanly
def sweep_cmd(
    run: RunOpt = None, counts: CountsOpt = None, preset: PresetOpt = None,
    config: ConfigOpt = None,
    alphas: Annotated[str, typer.Option("--alphas")] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    c_mins: Annotated[str, typer.Option("--c-mins")] = "0.8,0.85,0.9,0.92,0.95,0.97,0.99",
    out: OutDirOpt = None, as_json: JsonOpt = False,
) -> None:
    """k* over a grid of α and c_min (exact solver), as a table and a heatmap."""
    from draftvocab.api.analysis import sweep

    res = sweep(run, counts=counts, preset=preset, config=config, alphas=alphas, c_mins=c_mins,
                out=out)
    if as_json:
        _emit_json(res.to_json())
        return
    console.print(res.markdown, markup=False, highlight=False)
    err.print(f"-> {escape(str(res.out))}/sweep.json, sweep.png")


@app.command("report", epilog="Examples:\n\n"
             "  draftvocab report runs/smol-vocab                 # -> runs/smol-vocab/report.html\n\n"
             "  draftvocab report runs/smol-vocab -o report.html")
@_fail_cleanly
def report_cmd(
    run: Annotated[Path, typer.Argument(help="An `optimize` output directory.",
                                        show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """One self-contained HTML report: k*, FLOPs table, utility/Pareto plots and the analyses
    in RUN/analysis (coverage, missing tokens, stability, sweep)."""
    from draftvocab.api.analysis import report

    res = report(run, out)
    if as_json:
        _emit_json(res.to_json())
    else:
        err.print(f"report -> {escape(str(res.out))} (analyses: "
                  f"{', '.join(res.analyses) or 'none'})")
