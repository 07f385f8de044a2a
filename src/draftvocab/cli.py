"""The `draftvocab` command line: a thin Typer skin over the library.

Each command parses options, calls library functions and prints: human tables to stderr/stdout
via rich, or one JSON object on stdout with `--json`. A `DraftVocabError` becomes one red line and
exit code 1; nothing here does real work of its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from draftvocab.errors import DraftVocabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Choose draft vocabularies for speculative decoding (EAGLE-3): count assistant tokens, "
    "model draft FLOPs, optimise k, write SpecForge/SGLang mappings.\n\n"
    "Run [bold]draftvocab optimize[/bold] with no arguments for the paper's setting "
    "(Llama-3.1-8B, ShareGPT), all offline.",
)
err = Console(stderr=True)
console = Console()


def _fail_cleanly(fn):
    """User errors -> one red line, exit 1 (no traceback)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DraftVocabError as exc:
            # Escaped: messages quote user paths and text, which must not be read as markup.
            err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/bold red]: nothing was written")
            raise typer.Exit(130) from None

    return wrapper


def _emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# --- shared option groups ---------------------------------------------------------------------

PresetOpt = Annotated[str | None, typer.Option(
    "--preset", help="Built-in setting: llama3.1-8b (default) or smollm2-135m. "
    "Supplies config, tokenizer, chat template and dataset unless given explicitly.")]
TokenizerOpt = Annotated[Path | None, typer.Option(
    "--tokenizer", help="tokenizer.json, a HF tokenizer directory, or a .gguf file.")]
TemplateOpt = Annotated[Path | None, typer.Option(
    "--chat-template", help="Jinja chat template file (overrides the tokenizer's own).")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Target HF config.json (or directory / .gguf); V = its vocab_size.")]
DataArg = Annotated[list[str] | None, typer.Argument(
    help="Dataset(s): .jsonl/.json/.parquet files, directories, or save_to_disk folders. "
    "Default: the preset's dataset.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@dataclass
class _Setup:
    """Everything resolved from --preset / --tokenizer / --config / DATA."""

    preset: Any
    config_path: Path
    config: dict
    tokenizer: Any = None
    template_kwargs: dict | None = None
    data: list[str] | None = None
    skip_bad_lines: bool = False


def _setup(preset: str | None, config: Path | None, tokenizer: Path | None = None,
           chat_template: Path | None = None, data: list[str] | None = None,
           need_tokenizer: bool = True) -> _Setup:
    from draftvocab.assets import load_config, load_tokenizer
    from draftvocab.presets import DEFAULT_PRESET, get_preset

    explicit = tokenizer is not None or config is not None
    if preset:
        p = get_preset(preset)
    elif not explicit:
        p = get_preset(DEFAULT_PRESET)
    else:
        p = None
    if p is None and need_tokenizer and not (tokenizer and config):
        raise DraftVocabError("give both --tokenizer and --config, or a --preset")
    config_path = config or p.config_path()
    s = _Setup(preset=p, config_path=config_path, config=load_config(config_path))
    if need_tokenizer:
        if tokenizer is not None:
            s.tokenizer = load_tokenizer(tokenizer, chat_template=chat_template)
            s.template_kwargs = {}
        else:
            s.tokenizer = p.load_tokenizer()
            if chat_template is not None:
                from draftvocab.assets import read_chat_template
                s.tokenizer.chat_template = read_chat_template(chat_template)
            s.template_kwargs = dict(p.template_kwargs)
    if data:
        s.data = data
    elif p is not None:
        s.data = [str(p.dataset_path())]
        s.skip_bad_lines = p.skip_bad_lines
    return s


# --- counting ----------------------------------------------------------------------------------


class _CountProgress:
    """rich progress line: conversations, conversations/s, supervised tokens/s."""

    def __init__(self, total: int | None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]counting[/bold]"), BarColumn(),
            TextColumn("{task.completed:,.0f} conv"),
            TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(),
            console=err, transient=True,
        )
        self.task = self.progress.add_task("count", total=total, rate="")
        self.start = time.perf_counter()
        self.convs = 0
        self.tokens = 0

    def __call__(self, convs: int, tokens: int) -> None:
        self.convs += convs
        self.tokens += tokens
        dt = max(time.perf_counter() - self.start, 1e-9)
        rate = f"{self.convs / dt:,.0f} conv/s  {self.tokens / dt / 1e3:,.0f}k supervised tok/s"
        self.progress.update(self.task, advance=convs, rate=rate)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


def _count(s: _Setup, *, max_samples: int | None, seed: int, columns: str | None,
           role_map: list[str] | None, skip_bad_lines: bool, include_eot: bool,
           workers: int | None, quiet: bool):
    from draftvocab.assets import config_vocab_size
    from draftvocab.conversations import ColumnMap, parse_role_map, read_conversations
    from draftvocab.counts import count_tokens, merge_counts
    from draftvocab.spans import ChatSpans

    vocab = config_vocab_size(s.config, str(s.config_path))
    spans = ChatSpans(s.tokenizer, template_kwargs=s.template_kwargs, include_eot=include_eot)
    parts = []
    for source in s.data:
        reader = read_conversations(
            source, columns=ColumnMap.parse(columns) if columns else None,
            role_map=parse_role_map(role_map) if role_map else None,
            skip_bad_lines=skip_bad_lines or s.skip_bad_lines,
            max_samples=max_samples, seed=seed,
        )
        bar = _CountProgress(max_samples) if not quiet else None
        try:
            if bar:
                bar.__enter__()
            parts.append(count_tokens(reader, spans, vocab, workers=workers, progress=bar,
                                      dataset_fingerprint=reader.fingerprint()))
        finally:
            if bar:
                bar.__exit__(None, None, None)
    return parts[0] if len(parts) == 1 else merge_counts(parts)


SamplesOpt = Annotated[int | None, typer.Option(
    "--max-samples", help="Count a seeded random subset of this many records per dataset.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for sampling and TPE.")]
ColumnsOpt = Annotated[str | None, typer.Option(
    "--columns", help="Other schemas: 'messages=chat,role=speaker,content=text'.")]
RoleMapOpt = Annotated[list[str] | None, typer.Option(
    "--role-map", help="Map extra roles, e.g. --role-map narrator=assistant (repeatable).")]
SkipOpt = Annotated[bool, typer.Option(
    "--skip-bad-lines", help="Skip (and count) malformed JSON lines instead of stopping.")]
EotOpt = Annotated[bool, typer.Option(
    "--eot/--no-eot", help="Count each assistant turn's end-of-turn token (SpecForge does).")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", help="Processes for rendering+tokenising (default: all cores).")]


def _counts_summary(c) -> dict[str, Any]:
    m = c.metadata
    return {"vocab_size": c.vocab_size, "conversations": m.get("conversations"),
            "supervised_tokens": c.total,
            "distinct_tokens": int((c.counts > 0).sum()), "skipped": m.get("skipped"),
            "tokenizer": m.get("tokenizer"), "chat_template": m.get("chat_template")}


@app.command(epilog="Examples:\n\n"
             "  draftvocab count --out counts.safetensors            # preset llama3.1-8b\n\n"
             "  draftvocab count chats.jsonl --tokenizer tok/ --config config.json "
             "--max-samples 50000 --out counts.safetensors")
@_fail_cleanly
def count(
    data: DataArg = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Counts file to write.")] = Path(
        "counts.safetensors"),
    preset: PresetOpt = None, tokenizer: TokenizerOpt = None, chat_template: TemplateOpt = None,
    config: ConfigOpt = None, max_samples: SamplesOpt = None, seed: SeedOpt = 0,
    columns: ColumnsOpt = None, role_map: RoleMapOpt = None, skip_bad_lines: SkipOpt = False,
    eot: EotOpt = True, workers: WorkersOpt = None, as_json: JsonOpt = False,
) -> None:
    """Count token frequencies over assistant responses only -> counts.safetensors."""
    s = _setup(preset, config, tokenizer, chat_template, data)
    c = _count(s, max_samples=max_samples, seed=seed, columns=columns, role_map=role_map,
               skip_bad_lines=skip_bad_lines, include_eot=eot, workers=workers, quiet=as_json)
    c.save(out)
    summary = {**_counts_summary(c), "out": str(out)}
    if as_json:
        _emit_json(summary)
    else:
        err.print(f"counted {summary['conversations']:,} conversations, "
                  f"{summary['supervised_tokens']:,} supervised tokens "
                  f"({summary['distinct_tokens']:,} distinct) -> "
                  f"[bold]{escape(str(out))}[/bold]")
        if summary["skipped"]:
            err.print(f"skipped: {summary['skipped']}")


@app.command(epilog="Example:\n\n  draftvocab merge shard-*.safetensors --out counts.safetensors")
@_fail_cleanly
def merge(
    parts: Annotated[list[Path], typer.Argument(help="Counts files to sum.")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("counts.safetensors"),
    as_json: JsonOpt = False,
) -> None:
    """Merge counts from several shards (same tokenizer, template and V)."""
    from draftvocab.counts import TokenCounts, merge_counts

    c = merge_counts(TokenCounts.load(p) for p in parts)
    c.save(out)
    summary = {**_counts_summary(c), "out": str(out), "parts": [str(p) for p in parts]}
    if as_json:
        _emit_json(summary)
    else:
        err.print(f"merged {len(parts)} files: {c.total:,} supervised tokens -> {escape(str(out))}")


# --- FLOPs --------------------------------------------------------------------------------------


def _flops_table(flops, k: int | None) -> Table:
    t = Table(title=f"EAGLE-3 draft FLOPs per token (d={flops.hidden_size}, "
              f"V={flops.vocab_size:,}" + (f", k={k:,})" if k else ")"))
    t.add_column("Component")
    t.add_column("FLOPs", justify="right")
    t.add_column("M", justify="right")
    t.add_column("% of total", justify="right")
    for name, value, frac in flops.rows(k):
        t.add_row(name, f"{value:,}", f"{value / 1e6:,.1f}", f"{100 * frac:.1f}%")
    return t


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
    from draftvocab.flops import flops_breakdown

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


# --- optimise ----------------------------------------------------------------------------------


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
    workers: WorkersOpt = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Choose the draft vocabulary size k* and write the mapping, plots and summary."""
    from draftvocab.artefacts import write_run
    from draftvocab.assets import sha256_text
    from draftvocab.counts import TokenCounts
    from draftvocab.flops import flops_breakdown
    from draftvocab.objective import make_objective
    from draftvocab.optimize import optimize_objective

    if counts is not None and data:
        raise DraftVocabError("give either DATA or --counts, not both")
    # Validate cheap parameters before any expensive counting.
    from draftvocab.objective import utility_curve
    utility_curve(*([__import__("numpy").zeros(1)] * 2), alpha, c_min)
    s = _setup(preset, config, tokenizer, chat_template, data, need_tokenizer=True)
    f = flops_breakdown(s.config_path)  # path: errors name the file
    if counts is not None:
        c = TokenCounts.load(counts)
    else:
        c = _count(s, max_samples=max_samples, seed=seed, columns=columns, role_map=role_map,
                   skip_bad_lines=skip_bad_lines, include_eot=eot, workers=workers,
                   quiet=as_json)
    objective = make_objective(c.counts, f, alpha, c_min)
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
    name = s.preset.name if s.preset is not None and not (tokenizer or config) else "run"
    out_dir = out or Path("draftvocab-out") / name
    inputs = {"preset": getattr(s.preset, "name", None), "config": str(s.config_path),
              "config_sha256": sha256_text(json.dumps(s.config, sort_keys=True)),
              "counts_file": str(counts) if counts else None}
    decode = (lambda ids: s.tokenizer.convert_ids_to_tokens(ids)) if s.tokenizer else None
    out_dir, summary = write_run(out_dir, counts=c, flops=f, objective=objective, result=res,
                                 inputs=inputs, decode=decode, plots=plots)
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


# --- mapping -----------------------------------------------------------------------------------


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
    from draftvocab.assets import load_tokenizer
    from draftvocab.atomic import atomic_directory
    from draftvocab.counts import TokenCounts
    from draftvocab.mapping import build_mapping, write_mapping_files
    from draftvocab.objective import coverage_curve
    from draftvocab.presets import get_preset

    c = TokenCounts.load(counts)
    if not 1 <= k <= c.vocab_size:
        raise DraftVocabError(f"k must be in [1, V={c.vocab_size}], got {k}")
    tok = None
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif preset is not None:
        tok = get_preset(preset).load_tokenizer()
    m = build_mapping(c.counts, k)
    decode = (lambda ids: tok.convert_ids_to_tokens(ids)) if tok is not None else None
    with atomic_directory(out) as tmp:
        files = write_mapping_files(tmp, m, counts=c.counts, decode=decode)
    coverage = float(coverage_curve(c.counts)[k])
    summary = {"k": k, "vocab_size": c.vocab_size, "coverage": coverage, "out": str(out),
               "files": sorted(p.name for p in files)}
    if as_json:
        _emit_json(summary)
    else:
        err.print(f"k = {k:,} of V = {c.vocab_size:,}, coverage {coverage:.4f} -> {escape(str(out))}")


@app.command("presets")
def presets_cmd(as_json: JsonOpt = False) -> None:
    """List the built-in offline presets."""
    from draftvocab.presets import DEFAULT_PRESET, PRESETS

    rows = [{"name": p.name, "default": p.name == DEFAULT_PRESET, "description": p.description}
            for p in PRESETS.values()]
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        console.print(f"[bold]{r['name']}[/bold]{' (default)' if r['default'] else ''}: "
                  f"{r['description']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
