"""Analysis commands: coverage, missing, stability, sweep, report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

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
    _emit_json,
    _EvalRule,
    _fail_cleanly,
    _floats,
    _md_table,
    _progress,
    _Progressing,
    _run_summary,
    _setup,
    _spans,
    _Vocab,
    app,
    console,
    err,
)
from draftvocab.core.errors import DraftVocabError


def _vocab(run: Path | None, mapping: Path | None, counts: Path | None, k: int | None) -> _Vocab:
    from draftvocab.vocab.counts import TokenCounts
    from draftvocab.vocab.mapping import build_mapping, load_mapping

    if sum(x is not None for x in (run, mapping, counts)) != 1:
        raise DraftVocabError("give exactly one of --run, --mapping, or --counts with --k")
    if run is not None:
        summary = _run_summary(run)
        if not summary:
            raise DraftVocabError(f"{run} is not an `optimize` output directory (no summary.json)")
        c = TokenCounts.load(run / "counts.safetensors")
        m = load_mapping(run, vocab_size=c.vocab_size)
        return _Vocab(m.t2d, c, (summary.get("inputs") or {}).get("preset"),
                      f"{run} (k = {m.k:,})")
    if mapping is not None:
        m = load_mapping(mapping)
        return _Vocab(m.t2d, None, None, f"{mapping} (k = {m.k:,})")
    if k is None:
        raise DraftVocabError("--counts needs --k")
    c = TokenCounts.load(counts)
    if not 1 <= k <= c.vocab_size:
        raise DraftVocabError(f"k must be in [1, V={c.vocab_size}], got {k}")
    return _Vocab(build_mapping(c.counts, k).t2d, c, None, f"top {k:,} of {counts}")


def _eval_counts(v: _Vocab, data: list[str], group_by: str | None, preset: str | None,
                 tokenizer: Path | None, chat_template: Path | None, config: Path | None,
                 workers: int | None, quiet: bool,
                 rule: _EvalRule | None = None) -> tuple[dict, Any]:
    """Supervised-token counts of the evaluation data per group (per file without --group-by),
    with a clear error if it is tokenised differently from the vocabulary's training counts."""
    from draftvocab.chat.conversations import ColumnMap, read_conversations
    from draftvocab.core.assets import tokenizer_fingerprint
    from draftvocab.vocab.counts import count_by_group

    if not data:
        raise DraftVocabError("give the evaluation data (files or directories)")
    rule = rule or _EvalRule()
    from draftvocab.core.assets import config_vocab_size

    s = _setup(preset or v.preset, config, tokenizer, chat_template, data,
               template_kwargs=rule.template_kwargs)
    vocab = int(v.t2d.size)
    target_vocab = config_vocab_size(s.config, str(s.config_path))
    if vocab != target_vocab:
        raise DraftVocabError(
            f"the vocabulary {v.label} is over V={vocab:,} but the target config "
            f"{s.config_path} has vocab_size {target_vocab:,}: give the --preset or --config "
            "of the model it was made for")
    if v.counts is not None:
        theirs = (v.counts.metadata.get("tokenizer") or {}).get("sha256")
        ours = tokenizer_fingerprint(s.tokenizer).get("sha256")
        if theirs and ours and theirs != ours:
            raise DraftVocabError(
                f"the evaluation tokenizer (sha256 {ours[:12]}) differs from the one the "
                f"vocabulary was counted with ({theirs[:12]}): token ids are not comparable")
    spans = rule.spans(s, v.counts)
    groups: dict = {}
    for source in s.data:
        reader = read_conversations(source, columns=ColumnMap(group=group_by) if group_by else None,
                                    skip_bad_lines=s.skip_bad_lines)
        with _progress("counting", None, quiet) as bar:
            found = count_by_group(
                _Progressing(reader, bar), spans, vocab, workers=workers)
        for name, c in found.items():
            key = name if group_by else Path(source).stem
            groups[key] = groups[key] + c if key in groups else c
    return groups, s.tokenizer


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


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
    from draftvocab.analysis.coverage import coverage_table
    from draftvocab.core.atomic import atomic_files, check_output_dir

    v = _vocab(run, mapping, counts, k)
    rule = _EvalRule(template_kwargs, supervise, leading_assistant)
    if train_data and not group_by:
        raise DraftVocabError("--train-data needs --group-by (the domains to compare)")
    out = check_output_dir(out or ((run / "analysis") if run else Path("analysis")))
    groups, _ = _eval_counts(v, data, group_by, preset, tokenizer, chat_template, config,
                             workers, as_json, rule)
    train = None
    if train_data:
        train, _ = _eval_counts(v, [str(p) for p in train_data], group_by, preset, tokenizer,
                                chat_template, config, workers, as_json, rule)
    rows = coverage_table(groups, v.t2d, train)
    result = {"vocabulary": v.label, "group_by": group_by, "rows": [r.to_json() for r in rows]}
    head = ["set", "tokens", "coverage", "unique tokens", "unique coverage"]
    if train:
        head.append("share of training tokens")
    table = _md_table(head, [[r.name, f"{r.tokens:,}", _pct(r.coverage), f"{r.unique_tokens:,}",
                              _pct(r.unique_coverage)] + ([_pct(r.train_share)] if train else [])
                             for r in rows])
    with atomic_files(out) as stage:
        (stage / "coverage.json").write_text(json.dumps(result, indent=2) + "\n")
        (stage / "coverage.md").write_text(f"Vocabulary: {v.label}\n\n{table}")
    if as_json:
        _emit_json(result | {"out": str(out)})
        return
    console.print(f"Vocabulary: {v.label}\n\n{table}", markup=False, highlight=False)
    err.print(f"-> {escape(str(out))}/coverage.json, coverage.md")


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
    from draftvocab.analysis.coverage import missing_tokens
    from draftvocab.core.atomic import atomic_files, check_output_dir

    if top < 1:
        raise DraftVocabError("--top must be at least 1")
    v = _vocab(run, mapping, counts, k)
    out = check_output_dir(out or ((run / "analysis") if run else Path("analysis")))
    groups, tok = _eval_counts(v, data, group_by, preset, tokenizer, chat_template, config,
                               workers, as_json,
                               _EvalRule(template_kwargs, supervise, leading_assistant))
    if len(groups) > 1:
        groups = {**groups, "all": sum(groups.values())}

    def decode(ids):
        return [tok.decode([i]) for i in ids]

    result = {"vocabulary": v.label, "sets": {
        name: [m.__dict__ for m in missing_tokens(c, v.t2d, top, decode)]
        for name, c in groups.items()}}
    md = [f"Vocabulary: {v.label}\n"]
    for name, items in result["sets"].items():
        md.append(f"### {name}\n")
        md.append(_md_table(["id", "text", "count", "share of the set's tokens"],
                            [[m["id"], repr(m["text"]).replace("|", "\\|"),
                              f"{m['count']:,}", _pct(m["share"])] for m in items]))
    with atomic_files(out) as stage:
        (stage / "missing.json").write_text(
            json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        (stage / "missing.md").write_text("\n".join(md))
    if as_json:
        _emit_json(result | {"out": str(out)})
        return
    console.print("\n".join(md), markup=False, highlight=False)
    err.print(f"-> {escape(str(out))}/missing.json, missing.md")


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
    from rich.progress import Progress

    from draftvocab.analysis.plots import plot_stability
    from draftvocab.analysis.stability import SparseCounts, stability
    from draftvocab.chat.conversations import read_conversations
    from draftvocab.core.assets import config_vocab_size
    from draftvocab.core.atomic import atomic_files, check_output_dir
    from draftvocab.vocab.counts import iter_supervised
    from draftvocab.vocab.flops import flops_breakdown
    from draftvocab.vocab.objective import utility_curve

    if repeats < 1:
        raise DraftVocabError(f"--repeats must be at least 1, got {repeats}")
    size_list = _floats(sizes, "--sizes", int) if sizes else None
    if size_list is not None and (not size_list or min(size_list) < 1):
        raise DraftVocabError(f"--sizes must be positive numbers of conversations, got {sizes!r}")
    utility_curve(*([__import__("numpy").zeros(1)] * 2), alpha, c_min)
    out = check_output_dir(out)
    s = _setup(preset, config, tokenizer, chat_template, data, template_kwargs=template_kwargs)
    vocab = config_vocab_size(s.config, str(s.config_path))
    flops = flops_breakdown(s.config_path)
    spans = _spans(s, supervise=supervise, leading=leading_assistant)
    per_conv = []
    for source in s.data:
        reader = read_conversations(source, skip_bad_lines=skip_bad_lines or s.skip_bad_lines,
                                    max_samples=max_samples, seed=seed)
        with _progress("counting", max_samples, as_json) as bar:
            per_conv += [ids for _, ids in iter_supervised(_Progressing(reader, bar), spans,
                                                           vocab, workers=workers)]
    data_sparse = SparseCounts.from_conversations(per_conv)
    del per_conv
    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("subsets", total=len(size_list) if size_list else None)
        result = stability(data_sparse, vocab, flops, sizes=size_list,
                           repeats=repeats, alpha=alpha, c_min=c_min, seed=seed,
                           tolerance=tolerance, progress=lambda n: bar.advance(task, n))
    with atomic_files(out) as stage:
        (stage / "stability.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_stability(result, stage / "stability.png")
    if as_json:
        _emit_json(result | {"out": str(out)})
        return
    rows = [[f"{p['size']:,}", f"{p['mean']:,.0f}", f"{p['std']:,.0f}", f"{p['min']:,}",
             f"{p['max']:,}"] for p in result["points"]]
    console.print(_md_table(["conversations", "mean k*", "std", "min", "max"], rows),
                  markup=False, highlight=False)
    stable = result["stable_from"]
    err.print(f"k* on all {result['conversations']:,} conversations: {result['reference_k']:,}; "
              + (f"within ±{tolerance:.0%} from {stable:,} conversations on"
                 if stable else "not stable within the sizes tried")
              + f" -> {escape(str(out))}/stability.json, stability.png")


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
    from draftvocab.analysis.plots import plot_sweep
    from draftvocab.analysis.stability import sweep
    from draftvocab.core.atomic import atomic_files, check_output_dir
    from draftvocab.vocab.counts import TokenCounts
    from draftvocab.vocab.flops import flops_breakdown
    from draftvocab.vocab.objective import utility_curve

    if (run is None) == (counts is None):
        raise DraftVocabError("give --run or --counts")
    if run is not None:
        inputs = _run_summary(run).get("inputs") or {}
        counts = run / "counts.safetensors"
        if preset is None and config is None:
            preset = inputs.get("preset")
            config = None if preset else Path(inputs["config"]) if inputs.get("config") else None
    out = check_output_dir(out or ((run / "analysis") if run else Path("analysis")))
    alpha_list, c_min_list = _floats(alphas, "--alphas"), _floats(c_mins, "--c-mins")
    for a in alpha_list:
        for cm in c_min_list:
            utility_curve(*([__import__("numpy").zeros(1)] * 2), a, cm)  # each in [0, 1]
    s = _setup(preset, config, need_tokenizer=False)
    flops = flops_breakdown(s.config_path)
    c = TokenCounts.load(counts)
    if c.vocab_size != flops.vocab_size:
        raise DraftVocabError(f"the counts are over V={c.vocab_size:,} but {s.config_path} has "
                              f"vocab_size {flops.vocab_size:,}: give the model's --preset or "
                              "--config")
    rows = sweep(c.counts, flops, alpha_list, c_min_list)
    with atomic_files(out) as stage:
        (stage / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
        plot_sweep(rows, stage / "sweep.png")
    if as_json:
        _emit_json({"rows": rows, "out": str(out)})
        return
    a_list = sorted({r["alpha"] for r in rows})
    table = [[f"{cm:g}"] + [next((f"{r['k']:,}" if r["k"] else "—") for r in rows
                                 if r["alpha"] == a and r["c_min"] == cm) for a in a_list]
             for cm in sorted({r["c_min"] for r in rows})]
    console.print(_md_table(["c_min \\ α", *[f"{a:g}" for a in a_list]], table),
                  markup=False, highlight=False)
    err.print(f"-> {escape(str(out))}/sweep.json, sweep.png")


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
    from draftvocab.analysis.report import build_report
    from draftvocab.core.atomic import atomic_write, check_output_file

    out = check_output_file(out or run / "report.html")
    atomic_write(out, build_report(run))
    sections = [n for n in ("coverage", "missing", "stability", "sweep")
                if (run / "analysis" / f"{n}.json").is_file()]
    if as_json:
        _emit_json({"out": str(out), "analyses": sections})
    else:
        err.print(f"report -> {escape(str(out))} (analyses: {', '.join(sections) or 'none'})")
