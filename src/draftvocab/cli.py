"""The `draftvocab` command line: a thin Typer skin over the library.

Each command parses options, calls library functions and prints: human tables to stderr/stdout
via rich, or one JSON object on stdout with `--json`. A `DraftVocabError` becomes one red line and
exit code 1; nothing here does real work of its own.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
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
    "model draft FLOPs or measure latency, optimise k, analyse coverage; train, decode and "
    "benchmark drafts; export to SpecForge, SGLang and vLLM.\n\n"
    "Run [bold]draftvocab optimize[/bold] with no arguments for the paper's setting "
    "(Llama-3.1-8B, ShareGPT), all offline.",
)
err = Console(stderr=True)
console = Console()


def _fail_cleanly(fn):
    """User errors -> one red line, exit 1 (no traceback). Interrupts -> one line, exit 130
    (`__main__` prints it), also when a library swallowed one or turned it into another error.
    """

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from draftvocab import interrupts

        try:
            result = fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except DraftVocabError as exc:
            if interrupts.received():
                raise KeyboardInterrupt from None
            # Escaped: messages quote user paths and text, which must not be read as markup.
            err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception:
            if interrupts.received():
                raise KeyboardInterrupt from None
            raise
        interrupts.check()  # an interrupt a library swallowed: never a success
        return result

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
           need_tokenizer: bool = True, template_kwargs: str | None = None) -> _Setup:
    from draftvocab.assets import load_config, load_tokenizer
    from draftvocab.messages import parse_template_kwargs
    from draftvocab.presets import DEFAULT_PRESET, get_preset

    extra_kwargs = parse_template_kwargs(template_kwargs)  # a bad value fails before loading

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
        s.template_kwargs.update(extra_kwargs)
    if data:
        s.data = data
    elif p is not None:
        s.data = [str(p.dataset_path())]
        s.skip_bad_lines = p.skip_bad_lines
    return s


# --- counting ----------------------------------------------------------------------------------


class _Rates:
    """rich progress line: conversations done, and rates computed from the running totals
    of conversations and tokens that the worker reports."""

    def __init__(self, label: str, total: int | None, rate: Callable[[int, int, float], str]):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn(f"[bold]{label}[/bold]"), BarColumn(),
            TextColumn("{task.completed:,.0f} conv"),
            TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(),
            console=err, transient=True,
        )
        self.task = self.progress.add_task(label, total=total, rate="")
        self.rate = rate
        self.start = time.perf_counter()
        self.convs = 0
        self.tokens = 0

    def __call__(self, convs: int, tokens: int) -> None:
        self.convs += convs
        self.tokens += tokens
        dt = max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=convs, rate=self.rate(self.convs, self.tokens, dt))

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


def _counting_rate(convs: int, tokens: int, dt: float) -> str:
    return f"{convs / dt:,.0f} conv/s  {tokens / dt / 1e3:,.0f}k supervised tok/s"


def _progress(label: str, total: int | None, quiet: bool, rate=_counting_rate):
    """A `_Rates` bar, or (quiet, e.g. --json) a context that yields None."""
    return contextlib.nullcontext() if quiet else _Rates(label, total, rate)


def _spans(s: _Setup, *, include_eot: bool = True, supervise: str | None = "generated",
           leading: str | None = "drop"):
    """The supervision rule for this run (the template is checked on a probe conversation)."""
    from draftvocab.spans import ChatSpans

    return ChatSpans(s.tokenizer, template_kwargs=s.template_kwargs, include_eot=include_eot,
                     supervise=supervise or "generated", leading_assistant=leading or "drop")


def _count(s: _Setup, *, max_samples: int | None, seed: int, columns: str | None,
           role_map: list[str] | None, skip_bad_lines: bool, include_eot: bool,
           workers: int | None, quiet: bool, supervise: str = "generated",
           leading: str = "drop"):
    from draftvocab.assets import config_vocab_size
    from draftvocab.conversations import ColumnMap, parse_role_map, read_conversations
    from draftvocab.counts import count_tokens, merge_counts

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
    from draftvocab.assets import config_vocab_size
    from draftvocab.conversations import ColumnMap, parse_role_map
    from draftvocab.scaleout import ENGINES, count_with_datasets, count_with_ray

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


SamplesOpt = Annotated[int | None, typer.Option(
    "--max-samples", help="Count a seeded random subset of this many records per dataset.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for sampling and TPE.")]
ColumnsOpt = Annotated[str | None, typer.Option(
    "--columns", help="Other schemas: 'messages=chat,role=speaker,content=text'.")]
RoleMapOpt = Annotated[list[str] | None, typer.Option(
    "--role-map", help="Map extra roles, e.g. --role-map narrator=assistant (repeatable).")]
SkipOpt = Annotated[bool, typer.Option(
    "--skip-bad-lines", help="Skip (and count, by reason) malformed JSON lines and records "
    "(bad tools, tool calls, reasoning, roles) instead of stopping.")]
EotOpt = Annotated[bool, typer.Option(
    "--eot/--no-eot", help="Count each assistant turn's end-of-turn token (SpecForge does).")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", help="Processes for rendering+tokenising (default: all cores).")]
KwargsOpt = Annotated[str | None, typer.Option(
    "--template-kwargs", help="Chat-template arguments for the whole dataset, as a JSON object, "
    "e.g. '{\"enable_thinking\": false}' or '{\"reasoning_effort\": \"high\"}'; a record's "
    "own chat_template_kwargs win.")]
SuperviseOpt = Annotated[str, typer.Option(
    "--supervise", help="generated: every token the target writes for an assistant turn after "
    "the generation prompt (reasoning, tool calls, end-of-turn); content: only the assistant "
    "content and its end-of-turn token (the rule before reasoning and tool calls).")]
LeadingOpt = Annotated[str, typer.Option(
    "--leading-assistant", help="drop: an assistant turn with no user or tool turn before it "
    "answers no prompt and is not supervised (as SpecForge trains); keep: supervise it too.")]


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
    from draftvocab.atomic import check_output_file

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
    from draftvocab.atomic import check_output_file
    from draftvocab.counts import TokenCounts, merge_counts

    check_output_file(out)
    c = merge_counts([TokenCounts.load(p) for p in parts])
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

    from draftvocab.atomic import atomic_directory
    from draftvocab.latency import predict_speed
    from draftvocab.mapping import build_mapping, write_mapping_files
    from draftvocab.objective import coverage_curve
    from draftvocab.plots import plot_speed

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
    from draftvocab.artefacts import write_run
    from draftvocab.assets import sha256_text
    from draftvocab.atomic import check_output_dir
    from draftvocab.counts import TokenCounts
    from draftvocab.flops import flops_breakdown
    from draftvocab.objective import make_objective, utility_curve
    from draftvocab.optimize import optimize_objective

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
        from draftvocab.latency import default_grid

        latency_json = _measure(s.config, default_grid(f.vocab_size), 1, 256, 20, "cpu",
                                as_json)
    if latency_json is not None:
        from draftvocab.latency import LatencyModel

        model = LatencyModel.from_json(latency_json)
    if objective_name == "speedup":
        _optimize_speedup(s, c, f, model, latency_json, cal, k_min, k_max, out_dir,
                          counts, as_json)
        return
    objective = make_objective(c.counts, f, alpha, c_min)
    if model is not None:
        from draftvocab.objective import Objective

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
    from draftvocab.atomic import atomic_directory, check_output_dir
    from draftvocab.counts import TokenCounts
    from draftvocab.mapping import build_mapping, write_mapping_files
    from draftvocab.objective import coverage_curve
    from draftvocab.presets import get_preset

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


# --- regenerate --------------------------------------------------------------------------------


@app.command("regenerate", epilog="Examples:\n\n"
             "  draftvocab regenerate -o regen.jsonl --max-samples 1000   "
             "# SmolLM2-135M on ShareGPT\n\n"
             "  draftvocab regenerate chats.jsonl --target path/to/hf-model -o regen.jsonl "
             "--temperature 0.7 --top-p 0.9\n\n"
             "  draftvocab regenerate chats.jsonl -o regen.jsonl --turns first --json   "
             "# rerun the same command to resume\n\n"
             "  draftvocab regenerate chats.jsonl -o regen.jsonl --endpoint "
             "http://gpu-box:8000/v1 --model Qwen/Qwen3-8B --concurrency 32   "
             "# through vLLM / SGLang")
@_fail_cleanly
def regenerate_cmd(
    data: Annotated[str | None, typer.Argument(
        help="Dataset: .jsonl/.json/.parquet file, directory, or save_to_disk folder. "
        "Default: ShareGPT (the smollm2-135m preset's).", show_default=False)] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="JSONL to append to; conversations already in it are skipped, "
        "so rerunning resumes.")] = ...,
    target: Annotated[str | None, typer.Option(
        "--target", help="Preset name, .gguf file, or HF model directory [default: "
        "smollm2-135m]. With --endpoint only its tokenizer loads, to keep the server's token "
        "ids where they decode to the text.", show_default=False)] = None,
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", help="Regenerate through this OpenAI-compatible server (vLLM, SGLang, "
        "llama.cpp, `draftvocab serve`) instead of loading the target here.")] = None,
    model_name: Annotated[str | None, typer.Option(
        "--model", help="With --endpoint: the served model's name (default: the server's "
        "first in /v1/models).")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", help="With --endpoint: requests in flight.")] = 4,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="OPENAI_API_KEY", help="With --endpoint: bearer token.")] = None,
    max_samples: Annotated[int | None, typer.Option(
        "--max-samples", help="Regenerate a seeded random subset of this many records.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling records and tokens.")]
    = 0,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Conversations generated together (local target).")] = 8,
    max_new_tokens: Annotated[int, typer.Option(
        "--max-new-tokens", help="Longest reply per assistant turn, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="0 = greedy; > 0 samples.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling, in (0, 1].")] = 1.0,
    turns: Annotated[str, typer.Option(
        "--turns", help="all: every assistant turn, each seeing the regenerated ones before "
        "it; first: only the first (later messages are dropped).")] = "all",
    max_prompt_tokens: Annotated[int | None, typer.Option(
        "--max-prompt-tokens", help="Skip (and count) conversations whose prompt is longer.")]
    = None,
    columns: ColumnsOpt = None, role_map: RoleMapOpt = None, skip_bad_lines: SkipOpt = False,
    template_kwargs: KwargsOpt = None, leading_assistant: LeadingOpt = "drop",
    as_json: JsonOpt = False,
) -> None:
    """Rewrite a dataset's assistant turns with the target model's own replies -> JSONL
    (verbatim: reasoning and tool-call markup included)."""
    from draftvocab.conversations import ColumnMap, parse_role_map, read_conversations
    from draftvocab.messages import parse_template_kwargs
    from draftvocab.presets import PRESETS, get_preset
    from draftvocab.regenerate import check_options, finished_ids, regenerate
    from draftvocab.target import DEFAULT_TARGET, load_target

    check_options(batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, turns=turns, leading_assistant=leading_assistant)
    if concurrency < 1:
        raise DraftVocabError(f"--concurrency must be at least 1, got {concurrency}")
    if endpoint and max_prompt_tokens is not None:
        raise DraftVocabError("--max-prompt-tokens needs a local target: a server refuses a "
                              "prompt over its context itself (counted as rejected)")
    extra_kwargs = parse_template_kwargs(template_kwargs)
    finished_ids(out)  # a bad output file fails before the model loads
    preset = get_preset(target if target in PRESETS else DEFAULT_TARGET)
    reader = read_conversations(
        data if data is not None else preset.dataset_path(),
        columns=ColumnMap.parse(columns) if columns else None,
        role_map=parse_role_map(role_map) if role_map else None,
        skip_bad_lines=skip_bad_lines or (data is None and preset.skip_bad_lines),
        max_samples=max_samples, seed=seed,
    )
    kwargs = {**(preset.template_kwargs if (target or DEFAULT_TARGET) in PRESETS else {}),
              **extra_kwargs}
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
               "seed": seed, "turns": turns, "template_kwargs": kwargs,
               "leading_assistant": leading_assistant}
    if endpoint:
        ep, tokenizer = _endpoint(endpoint, model_name, api_key), None
        if target is not None:
            from draftvocab.target import load_target_tokenizer

            tokenizer = load_target_tokenizer(target)
    else:
        model = load_target(target or DEFAULT_TARGET)
    try:
        with _progress("regenerating", max_samples, as_json, rate=lambda c, t, dt:
                       f"{t:,} tok  {t / dt:,.1f} tok/s") as bar:
            if endpoint:
                from draftvocab.regenerate import regenerate_remote

                stats = regenerate_remote(reader, ep, out, concurrency=concurrency,
                                          tokenizer=tokenizer, progress=bar, **options)
            else:
                stats = regenerate(reader, model, out, batch_size=batch_size,
                                   max_prompt_tokens=max_prompt_tokens, progress=bar,
                                   **options)
    except KeyboardInterrupt:
        err.print(f"[bold red]interrupted[/bold red]: finished conversations are in "
                  f"{escape(str(out))}; rerun the same command to resume")
        raise typer.Exit(130) from None
    summary = {**stats.to_json(), "read_skipped": reader.stats.skipped, "out": str(out),
               "target": ep.model if endpoint else target or DEFAULT_TARGET}
    if endpoint:
        summary |= {"endpoint": ep.url, "concurrency": concurrency}
    if stats.written == 0 and stats.already_done == 0:  # an empty result is a failure
        skipped = stats.skipped | reader.stats.skipped
        why = ", ".join(f"{k}: {v:,}" for k, v in sorted(skipped.items())) or "no conversations"
        hint = (" (prompts longer than the context minus --max-new-tokens, or than "
                "--max-prompt-tokens)" if "too_long" in skipped else "")
        first = next(iter(stats.skipped_examples.values()), None)
        raise DraftVocabError(f"nothing was regenerated: skipped {why}{hint}"
                              + (f"; first: {first}" if first else ""))
    if as_json:
        _emit_json(summary)
        return
    err.print(f"regenerated {stats.written:,} conversations ({stats.already_done:,} already "
              f"done), {stats.generated_tokens:,} tokens in {stats.seconds:,.1f} s "
              f"({stats.tokens_per_s:,.1f} tok/s) -> [bold]{escape(str(out))}[/bold]")
    if stats.skipped or reader.stats.skipped:
        err.print(f"skipped: {stats.skipped | reader.stats.skipped}")
        for reason, example in stats.skipped_examples.items():
            err.print(f"  first {reason}: {escape(example)}")


def _endpoint(url: str, model: str | None, api_key: str | None):
    """An `endpoint.Endpoint` checked before any work: the server answers /v1/models and
    serves the named model (default: the first it lists)."""
    from draftvocab.endpoint import Endpoint, served_models

    ep = Endpoint(url, model or "", api_key=api_key)
    names = served_models(ep)
    if not model:
        if not names:
            raise DraftVocabError(f"{ep.url}/v1/models lists no model: give --model")
        ep.model = names[0]
    elif names and model not in names:
        raise DraftVocabError(f"{ep.url} does not serve model '{model}' (it lists: "
                              f"{', '.join(names[:5])})")
    return ep


# --- train -------------------------------------------------------------------------------------


class _TrainProgress:
    """rich progress line: optimizer steps, loss, per-TTT-step top-1 accuracy."""

    def __init__(self, total: int | None = None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]training[/bold]"), BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TextColumn("[cyan]{task.fields[stats]}"), TimeElapsedColumn(),
            console=err, transient=True,
        )
        self.task = self.progress.add_task("train", total=total, stats="")

    def __call__(self, step: int, total: int, entry: dict) -> None:
        acc = " ".join(f"acc@{j} {a:.2f}" for j, a in enumerate(entry["acc"]) if a is not None)
        self.progress.update(self.task, completed=step, total=total,
                             stats=f"loss {entry['loss']:.3f}  {acc}")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


@app.command("train", epilog="Examples:\n\n"
             "  draftvocab train -o draft/ --max-samples 2000 --max-len 512   "
             "# SmolLM2-135M on ShareGPT, full vocabulary\n\n"
             "  draftvocab train regen.jsonl --mapping run/vocab_mapping.pt -o draft/ "
             "--epochs 2 --save-every 500\n\n"
             "  draftvocab train regen.jsonl --mapping run/ -o draft/ --save-every 500 --resume   "
             "# continue an interrupted run\n\n"
             "  draftvocab train chats.jsonl --target path/to/hf-model -o draft/ --dtype bf16 "
             "--json\n\n"
             "  draftvocab train regen.jsonl --mapping run/ --drafter specblock -o sb/   "
             "# SpecBlock, K = 4, 2 layers")
@_fail_cleanly
def train_cmd(
    data: Annotated[str | None, typer.Argument(
        help="Conversations: .jsonl/.json/.parquet file, directory, or save_to_disk folder "
        "(e.g. the output of `draftvocab regenerate`). Default: ShareGPT.",
        show_default=False)] = None,
    target: Annotated[str, typer.Option(
        "--target", help="Preset name, .gguf file, or HF model directory.")] = "smollm2-135m",
    mapping: Annotated[Path | None, typer.Option(
        "--mapping", help="vocab_mapping.pt/.safetensors (or its directory) from `optimize` or "
        "`mapping`. Default: the full vocabulary.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Directory: final draft, train_log.json, checkpoint-<step>/.")]
    = Path("draft"),
    max_samples: Annotated[int | None, typer.Option(
        "--max-samples", help="Train on a seeded random subset of this many records.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the data.")] = 1,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", help="Optimizer steps (overrides --epochs; the data cycles).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Conversations per step.")]
    = 4,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate.")] = 3e-4,
    warmup: Annotated[int | None, typer.Option(
        "--warmup", help="Linear warm-up steps, then cosine decay (default: 5% of steps).")]
    = None,
    max_len: Annotated[int, typer.Option("--max-len", help="Tokens kept per conversation.")]
    = 1024,
    ttt_steps: Annotated[int, typer.Option(
        "--ttt-steps", help="Training-time-test steps (tokens drafted ahead).")] = 7,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="fp32 or bf16 (autocast) for the draft.")] = "fp32",
    save_every: Annotated[int, typer.Option(
        "--save-every", help="Checkpoint every N optimizer steps (0: final draft only).")] = 0,
    drafter: Annotated[str, typer.Option(
        "--drafter", help="eagle3 (one token per forward) or specblock (K per forward).")]
    = "eagle3",
    block_size: Annotated[int, typer.Option(
        "--block-size", help="SpecBlock: positions per drafter forward (K).")] = 4,
    draft_layers: Annotated[int, typer.Option(
        "--draft-layers", help="SpecBlock: decoder layers.")] = 2,
    shift: Annotated[bool, typer.Option(
        "--shift/--no-shift", help="SpecBlock: layer-wise shift (ablation: off).")] = True,
    inherit: Annotated[bool, typer.Option(
        "--inherit/--no-inherit", help="SpecBlock: cross-block inheritance (ablation: off).")]
    = True,
    rank_head: Annotated[bool, typer.Option(
        "--rank-head/--no-rank-head", help="SpecBlock: co-trained rank head.")] = True,
    valid_prefix: Annotated[bool, typer.Option(
        "--valid-prefix/--no-valid-prefix", help="SpecBlock: valid-prefix loss mask.")] = True,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the latest checkpoint in --out.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling, init and data order.")]
    = 0,
    cache_features: Annotated[Path | None, typer.Option(
        "--cache-features", help="Compute the target's features once into this directory "
        "(fp16, memory-mapped; reused by later runs on the same data and target) instead of a "
        "target forward every step.")] = None,
    eval_data: Annotated[str | None, typer.Option(
        "--eval-data", help="Held-out conversations the target generated (`regenerate`): "
        "chain τ on them is logged during training and plotted (training.png).")] = None,
    eval_samples: Annotated[int, typer.Option(
        "--eval-samples", help="Held-out conversations used (seeded subset).")] = 64,
    eval_every: Annotated[int | None, typer.Option(
        "--eval-every", help="Held-out evaluation every N steps (default: 10 per run).")]
    = None,
    eval_gamma: Annotated[int, typer.Option(
        "--eval-gamma", help="Chain length γ of the held-out τ.")] = 3,
    skip_bad_lines: SkipOpt = False, template_kwargs: KwargsOpt = None,
    supervise: SuperviseOpt = "generated", leading_assistant: LeadingOpt = "drop",
    as_json: JsonOpt = False,
) -> None:
    """Train a draft on the target's hidden states: EAGLE-3 (training-time test) or SpecBlock
    (K positions per forward, --drafter specblock)."""
    from draftvocab.conversations import read_conversations
    from draftvocab.presets import PRESETS, get_preset
    from draftvocab.target import DEFAULT_TARGET, load_target
    from draftvocab.train import TrainConfig, encode_conversations, mapping_tensors, train_draft

    config = TrainConfig(ttt_steps=ttt_steps, lr=lr, warmup_steps=warmup, batch_size=batch_size,
                         epochs=epochs, max_steps=max_steps, max_len=max_len, dtype=dtype,
                         save_every=save_every, seed=seed, drafter=drafter,
                         block_size=block_size, draft_layers=draft_layers, shift=shift,
                         inherit=inherit, rank_head=rank_head, valid_prefix=valid_prefix)
    from draftvocab.atomic import check_output_dir

    config.check()  # cheap errors before loading anything
    check_output_dir(out)
    if cache_features is not None:
        check_output_dir(cache_features)
    if eval_samples < 1 or eval_gamma < 1 or (eval_every is not None and eval_every < 1):
        raise DraftVocabError("--eval-samples, --eval-gamma and --eval-every must be >= 1")
    from draftvocab.messages import parse_template_kwargs
    from draftvocab.spans import ChatSpans

    extra_kwargs = parse_template_kwargs(template_kwargs)
    preset = get_preset(target if target in PRESETS else DEFAULT_TARGET)
    reader = read_conversations(
        data if data is not None else preset.dataset_path(),
        skip_bad_lines=skip_bad_lines or (data is None and preset.skip_bad_lines),
        max_samples=max_samples, seed=seed)
    held_reader = (read_conversations(eval_data, skip_bad_lines=skip_bad_lines,
                                      max_samples=eval_samples, seed=seed)
                   if eval_data is not None else None)
    vocab_mapping = None
    if mapping is not None:
        from draftvocab.mapping import load_mapping
        vocab_mapping = load_mapping(mapping)  # a bad file fails before the target loads
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar before a one-line error
    try:
        model = load_target(target)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    d2t = t2d = None
    if mapping is not None:
        d2t, t2d = mapping_tensors(vocab_mapping, model.vocab_size)
    spans = ChatSpans(model.tokenizer, supervise=supervise, leading_assistant=leading_assistant,
                      template_kwargs={**(preset.template_kwargs if target in PRESETS else {}),
                                       **extra_kwargs})
    examples, skipped = encode_conversations(reader, model.tokenizer, max_len, spans=spans)
    heldout = None
    if held_reader is not None:
        import functools

        from draftvocab.acceptance import chain_tau, prepare_heldout

        held, _ = encode_conversations(held_reader, model.tokenizer, max_len, spans=spans)
        if not held:
            raise DraftVocabError(f"no usable held-out conversations in {eval_data}")
        heldout = functools.partial(chain_tau, held=prepare_heldout(model, held),
                                    gamma=eval_gamma)
    features = None
    if cache_features is not None and examples:
        from rich.progress import Progress

        from draftvocab.features import build_features

        with Progress(console=err, transient=True, disable=as_json) as fbar:
            task = fbar.add_task("target features", total=len(examples))
            features = build_features(model, examples, cache_features,
                                      progress=lambda done, _n: fbar.update(task, completed=done))
    bar = _TrainProgress() if not as_json else None
    with bar if bar is not None else contextlib.nullcontext():
        result = train_draft(model, examples, out, d2t=d2t, t2d=t2d, config=config,
                             resume=resume, skipped={**reader.stats.skipped, **skipped},
                             progress=bar, features=features, heldout=heldout,
                             eval_every=eval_every)
    summary = {**result.to_json(), "target": target,
               "mapping": str(mapping) if mapping else None}
    if as_json:
        _emit_json(summary)
        return
    acc = ", ".join(f"acc@{j} {a:.3f}" for j, a in enumerate(result.final_acc) if a is not None)
    resumed = f" (resumed from {escape(result.resumed_from)})" if result.resumed_from else ""
    err.print(f"trained {result.steps:,} steps on {result.examples:,} conversations "
              f"(k = {result.draft_vocab_size:,} of V = {result.vocab_size:,}){resumed}, "
              f"{result.seconds_per_step:.2f} s/step; last step: loss {result.final_loss:.4f}, "
              f"{acc} -> [bold]{escape(str(out))}[/bold]")
    if result.heldout:
        h = result.heldout
        err.print(f"held-out: τ {h['tau']:.3f} (chain γ = {h['gamma']}, {h['rounds']:,} "
                  f"rounds), acc@0 {h['acc'][0]:.3f}; curve: {escape(str(out / 'training.png'))}")
    if result.skipped:
        err.print(f"skipped: {result.skipped}")


# --- decoding ----------------------------------------------------------------------------------

DecodeTreeOpt = Annotated[bool, typer.Option(
    "--tree/--chain", help="EAGLE-2 dynamic tree (greedy) or a chain of --gamma tokens.")]
DepthOpt = Annotated[int, typer.Option("--depth", help="Tree depth.")]
TopkOpt = Annotated[int, typer.Option("--topk", help="Tree branching.")]
TotalTokensOpt = Annotated[int, typer.Option("--total-tokens", help="Tree nodes verified.")]
GammaOpt = Annotated[int, typer.Option("--gamma", help="Chain length.")]


BlocksOpt = Annotated[int, typer.Option(
    "--blocks", help="SpecBlock drafts: block expansions per round (depth up to blocks x K).")]
BranchOpt = Annotated[int, typer.Option(
    "--branch", help="SpecBlock drafts: candidates per row when branching.")]
PolicyOpt = Annotated[str | None, typer.Option(
    "--policy", help="SpecBlock drafts: rank (rank head decides), fixed (top---branch every "
    "row) or chain (default: rank if the draft has a rank head; chain with --chain).")]
BanditOpt = Annotated[bool, typer.Option(
    "--bandit", help="SpecBlock drafts: cost-aware bandit picks (blocks, branch) per round.")]
AdaptiveOpt = Annotated[bool, typer.Option(
    "--adaptive", help="EAGLE-3 chain: choose each round's length (<= --gamma; 0 = a plain "
    "step) from measured costs and recent acceptance.")]


def _decoder(target, draft_dir: Path | None, tree: bool, depth: int, topk: int,
             total_tokens: int, gamma: int, blocks: int = 2, branch: int = 4,
             policy: str | None = None, bandit: bool = False, adaptive: bool = False):
    """The decoder for a draft directory (EAGLE-3 or SpecBlock), or plain decoding."""
    from draftvocab.blockdecode import decoder_for
    from draftvocab.draft import load_draft

    draft = load_draft(draft_dir, target) if draft_dir else None
    chooser = None
    if bandit:
        from draftvocab.bandit import BudgetBandit
        chooser = BudgetBandit()
    return decoder_for(target, draft, tree=tree, depth=depth, topk=topk,
                       total_tokens=total_tokens, gamma=gamma, blocks=blocks, branch=branch,
                       policy=policy, bandit=chooser, adaptive=adaptive)


@app.command(epilog="Examples:\n\n"
             "  draftvocab serve                                   # SmolLM2-135M, plain, "
             "port 8000\n\n"
             "  draftvocab serve --draft runs/draft-trimmed --chain --gamma 2 --port 8001\n\n"
             "  draftvocab serve --port 0 --queue 4   # a free port, printed when ready\n\n"
             "Then any OpenAI client: base_url=http://127.0.0.1:8000/v1, model 'smollm2-135m'.")
@_fail_cleanly
def serve(
    target: Annotated[str, typer.Option("--target", help="Preset, .gguf or HF model dir.")]
    = "smollm2-135m",
    draft: Annotated[Path | None, typer.Option(
        "--draft", help="EAGLE-3 or SpecBlock draft dir; none = plain decoding.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free port).")] = 8000,
    model_name: Annotated[str | None, typer.Option(
        "--model-name", help="The model id clients send (default: the --target).")] = None,
    queue: Annotated[int, typer.Option(
        "--queue", help="Requests that may wait while one is decoded; one more gets 429.")]
    = 16,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", help="New tokens when a request sets no max_tokens.")] = 256,
    tree: DecodeTreeOpt = True,
    depth: DepthOpt = 6,
    topk: TopkOpt = 8,
    total_tokens: TotalTokensOpt = 32,
    gamma: GammaOpt = 5,
    blocks: BlocksOpt = 2,
    branch: BranchOpt = 4,
    policy: PolicyOpt = None,
    bandit: BanditOpt = False,
    adaptive: AdaptiveOpt = False,
    template_kwargs: KwargsOpt = None,
) -> None:
    """An OpenAI-compatible server (chat and text completions, streaming, /v1/models) over the
    target and an optional draft; one request decoded at a time. Stop it with Ctrl-C or
    SIGTERM. Responses carry speculative statistics in an extra `draftvocab` field."""
    import socket

    import uvicorn

    from draftvocab import interrupts
    from draftvocab.draft import aux_layers
    from draftvocab.messages import parse_template_kwargs
    from draftvocab.presets import PRESETS, get_preset
    from draftvocab.serve import ServingEngine, create_app, engine_thread
    from draftvocab.target import load_target

    if queue < 0 or max_tokens < 1 or not 0 <= port <= 65535:
        raise DraftVocabError("--queue must be >= 0, --max-tokens >= 1, --port in [0, 65535]")
    kwargs = {**(get_preset(target).template_kwargs if target in PRESETS else {}),
              **parse_template_kwargs(template_kwargs)}
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise DraftVocabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def load():
        tgt = load_target(target, layers=aux_layers([draft] if draft else []))
        return tgt, _decoder(tgt, draft, tree, depth, topk, total_tokens, gamma, blocks,
                             branch, policy, bandit, adaptive)

    executor = engine_thread()  # loads the model and runs every decode (see ServingEngine)
    tgt, dec = executor.submit(load).result()
    name = model_name or target
    engine = ServingEngine(tgt, dec, name, queue_size=queue, default_max_tokens=max_tokens,
                           template_kwargs=kwargs, executor=executor)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning",
                                           timeout_graceful_shutdown=30))
    err.print(f"serving [bold]{escape(name)}[/bold] on http://{host}:{bound}/v1 "
              f"({'draft ' + escape(str(draft)) if draft else 'plain decoding'}; one request at "
              f"a time, {queue} may wait)", highlight=False, soft_wrap=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        if not server.should_exit:
            raise
    # uvicorn stopped gracefully on SIGINT/SIGTERM and handed the signal back: a normal end.
    signum = interrupts.received()
    interrupts.reset()
    err.print(f"stopped{f' ({signal_name(signum)})' if signum else ''}: "
              f"{engine.served:,} requests served")


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


@app.command(epilog="Examples:\n\n"
             "  draftvocab generate 'Why is the sky blue?'                  # plain target\n\n"
             "  draftvocab generate 'Why is the sky blue?' --draft draft/   # speculative\n\n"
             "  draftvocab generate 'Tell a story' --draft draft/ --temperature 0.8 --chain")
@_fail_cleanly
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message (rendered with the target's "
                                          "chat template).")],
    target: Annotated[str, typer.Option("--target", help="Preset, .gguf or HF model dir.")]
    = "smollm2-135m",
    draft: Annotated[Path | None, typer.Option(
        "--draft", help="EAGLE-3 or SpecBlock draft dir; none = plain decoding.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: SeedOpt = 0,
    tree: DecodeTreeOpt = True,
    depth: DepthOpt = 6,
    topk: TopkOpt = 8,
    total_tokens: TotalTokensOpt = 32,
    gamma: GammaOpt = 5,
    blocks: BlocksOpt = 2,
    branch: BranchOpt = 4,
    policy: PolicyOpt = None,
    adaptive: AdaptiveOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate one answer, plainly or speculatively (greedy output is the target's own)."""
    from draftvocab.draft import aux_layers
    from draftvocab.target import load_target

    if max_new_tokens < 1:
        raise DraftVocabError("--max-new-tokens must be at least 1")
    tgt = load_target(target, layers=aux_layers([draft] if draft else []))
    dec = _decoder(tgt, draft, tree, depth, topk, total_tokens, gamma, blocks, branch, policy,
                   adaptive=adaptive)
    ids = tgt.prompt_ids([{"role": "user", "content": prompt}])
    res = dec.generate(ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    text = tgt.tokenizer.decode(res.tokens, skip_special_tokens=True)
    summary = {"text": text, "tokens": len(res.tokens), "seconds": res.seconds,
               "tokens_per_s": len(res.tokens) / max(res.seconds, 1e-9),
               "accept_length": res.mean_accept_length,
               "target_forwards": res.target_forwards, "draft_forwards": res.draft_forwards,
               "draft_share": res.draft_seconds / max(res.draft_seconds + res.target_seconds,
                                                      1e-9)}
    if as_json:
        _emit_json(summary)
        return
    console.print(text, highlight=False, markup=False)
    err.print(f"{summary['tokens']} tokens in {res.seconds:.2f} s "
              f"({summary['tokens_per_s']:.1f} tok/s), accept length "
              f"{summary['accept_length']:.2f}, draft share {summary['draft_share']:.0%}")


@app.command(epilog="Examples:\n\n"
             "  draftvocab bench --draft full=drafts/full --draft trimmed=drafts/k8000 -o bench/\n\n"
             "  draftvocab bench --per-category 2 --max-new-tokens 64 --runs 3 -o quick/\n\n"
             "  draftvocab bench --draft eagle=drafts/k6851 --draft block=drafts/specblock "
             "--chain --gamma 2 --blocks 1 -o sb/\n\n"
             "  draftvocab bench --endpoint plain=http://gpu:30000/v1 "
             "--endpoint trimmed=http://gpu:30001/v1 -o sglang/   # servers side by side\n\n"
             "  draftvocab bench --draft trimmed=runs/draft-trimmed --endpoint "
             "served=http://127.0.0.1:8000/v1 -o overhead/   # in-process beside a server\n\n"
             "  draftvocab bench --draft trimmed=runs/draft-trimmed --peer prompt-lookup "
             "--peer hf-generate -o peers/   # beside transformers' decoding")
@_fail_cleanly
def bench(
    draft: Annotated[list[str] | None, typer.Option(
        "--draft", help="NAME=DIR of an EAGLE-3 or SpecBlock draft (repeatable); plain "
        "decoding always runs as the baseline.")] = None,
    adaptive_draft: Annotated[list[str] | None, typer.Option(
        "--adaptive-draft", help="NAME=DIR of an EAGLE-3 draft decoded as a chain whose length "
        "(<= --gamma, 0 = a plain step) is chosen every round from measured costs and recent "
        "acceptance (repeatable; beside --draft to compare).")] = None,
    adaptive_gamma: Annotated[int | None, typer.Option(
        "--adaptive-gamma", help="Longest chain of --adaptive-draft variants (default: "
        "--gamma).", show_default=False)] = None,
    endpoint: Annotated[list[str] | None, typer.Option(
        "--endpoint", help="[NAME=]URL of an OpenAI-compatible server (repeatable; vLLM, "
        "SGLang, `draftvocab serve`), asked greedy and streamed; the first is the baseline "
        "when nothing runs in-process.")] = None,
    model_name: Annotated[str | None, typer.Option(
        "--model", help="Model name sent to every --endpoint (default: each server's first "
        "in /v1/models).")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="OPENAI_API_KEY", help="Bearer token for --endpoint.")] = None,
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", help="Other libraries' decoding as more variants (repeatable): hf-generate "
        "(transformers' plain generate), prompt-lookup (its prompt-lookup decoding, no "
        "draft).")] = None,
    prompt_lookup_tokens: Annotated[int, typer.Option(
        "--prompt-lookup-tokens", help="prompt-lookup: tokens proposed per round.")] = 10,
    local: Annotated[bool | None, typer.Option(
        "--local/--no-local", help="Run plain decoding (and --draft) in-process too; default: "
        "yes without --endpoint, and with it only if --draft or --target is given.",
        show_default=False)] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Preset, .gguf or HF model dir [default: smollm2-135m].",
        show_default=False)] = None,
    questions: Annotated[Path | None, typer.Option(
        "--questions", help="Spec-Bench JSONL (default: ../shared/data/"
        "spec_bench_questions.jsonl).")] = None,
    per_category: Annotated[int | None, typer.Option(
        "--per-category", help="First N questions of each category.")] = None,
    turns: Annotated[int | None, typer.Option("--turns", help="At most N turns each.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    runs: Annotated[int, typer.Option("--runs", help="Independent runs (for the CI).")] = 3,
    tree: DecodeTreeOpt = True,
    depth: DepthOpt = 6,
    topk: TopkOpt = 8,
    total_tokens: TotalTokensOpt = 32,
    gamma: GammaOpt = 5,
    blocks: BlocksOpt = 2,
    branch: BranchOpt = 4,
    policy: PolicyOpt = None,
    bandit: BanditOpt = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory.")]
    = Path("bench-out"),
    as_json: JsonOpt = False,
) -> None:
    """Spec-Bench throughput: plain vs speculative decoding, interleaved, mean ± 95 % CI."""
    from rich.progress import Progress

    from draftvocab.atomic import check_output_dir
    from draftvocab.bench import load_questions, markdown, run_benchmark, write_report
    from draftvocab.decode import SpeculativeDecoder
    from draftvocab.draft import aux_layers
    from draftvocab.target import load_target

    if runs < 1 or max_new_tokens < 1:
        raise DraftVocabError("--runs and --max-new-tokens must be at least 1")
    local = local if local is not None else (not endpoint or bool(draft) or bool(peer)
                                             or target is not None)
    if (draft or peer) and not local:
        raise DraftVocabError("--draft and --peer run in-process: drop --no-local")
    peers = list(dict.fromkeys(peer or []))
    if set(peers) - PEERS or prompt_lookup_tokens < 1:
        raise DraftVocabError(f"--peer is one of {', '.join(sorted(PEERS))} (got "
                              f"{', '.join(peers)}); --prompt-lookup-tokens >= 1")
    specs, adaptive_names = [], set()
    for item, flag in [(d, "--draft") for d in draft or []] + [
            (d, "--adaptive-draft") for d in adaptive_draft or []]:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise DraftVocabError(f"{flag} takes NAME=DIR, got '{item}'")
        if name == "plain" or name in PEERS or name in dict(specs):
            raise DraftVocabError(f"{flag} name {name!r} is taken: give each draft its own name")
        specs.append((name, Path(path)))
        if flag == "--adaptive-draft":
            adaptive_names.add(name)
    servers = _bench_endpoints(endpoint or [], {"plain", *PEERS, *dict(specs)} if local
                               else set(), model_name, api_key)
    check_output_dir(out)
    qs = load_questions(questions, per_category=per_category, turns=turns)
    tgt, variants = None, {}
    if local:
        tgt = load_target(target or "smollm2-135m", layers=aux_layers([p for _, p in specs]))
        variants = {"plain": SpeculativeDecoder(tgt)}
        for name, path in specs:
            adaptive = name in adaptive_names
            variants[name] = _decoder(tgt, path, tree and not adaptive, depth, topk,
                                      total_tokens, gamma if adaptive_gamma is None or not
                                      adaptive else adaptive_gamma, blocks, branch, policy,
                                      bandit, adaptive)
        if peers:
            from draftvocab.peers import HFGenerate

            for name in peers:
                variants[name] = HFGenerate(tgt, prompt_lookup=prompt_lookup_tokens
                                            if name == "prompt-lookup" else 0)
    total = runs * sum(len(q.turns) for q in qs)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("benchmark", total=total)
        report = run_benchmark(tgt, variants, qs, max_new_tokens=max_new_tokens, runs=runs,
                               progress=lambda n: bar.advance(task, n), endpoints=servers)
    if not report["rows"]:
        raise DraftVocabError("no request was measured: "
                              + report.get("skipped_example", "every prompt was too long"))
    write_report(report, out)
    if as_json:
        _emit_json({k: v for k, v in report.items() if k != "rows"} | {"out": str(out)})
        return
    console.print(markdown(report), markup=False, highlight=False)
    err.print(f"report -> {escape(str(out))}: report.md, report.json, throughput.png")


PEERS = {"hf-generate", "prompt-lookup"}


def _bench_endpoints(items: list[str], taken: set[str], model: str | None,
                     api_key: str | None) -> dict:
    """`[NAME=]URL` options -> named endpoints (names default to endpoint, endpoint-2, ...)."""
    out: dict = {}
    for i, item in enumerate(items, start=1):
        name, sep, url = item.partition("=")
        if not sep or "://" in name:
            name, url = ("endpoint" if i == 1 else f"endpoint-{i}"), item
        if not name or not url:
            raise DraftVocabError(f"--endpoint takes [NAME=]URL, got '{item}'")
        if name in taken or name in out:
            raise DraftVocabError(f"--endpoint name {name!r} is taken: give each its own name")
        out[name] = _endpoint(url, model, api_key)
    return out


# --- analyses -----------------------------------------------------------------------------------

RunOpt = Annotated[Path | None, typer.Option(
    "--run", help="An `optimize` output directory: its mapping, counts and preset are used.")]
MappingOpt = Annotated[Path | None, typer.Option(
    "--mapping", help="vocab_mapping.pt/.safetensors (instead of --run).")]
CountsOpt = Annotated[Path | None, typer.Option(
    "--counts", help="Training counts file (with --k, instead of --run).")]
KOpt = Annotated[int | None, typer.Option("--k", help="Vocabulary = top-k of --counts.")]
GroupOpt = Annotated[str | None, typer.Option(
    "--group-by", help="Record field that splits the evaluation data, e.g. category.")]
OutDirOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Directory for the JSON/markdown/PNG (default: RUN/analysis).")]
EvalSuperviseOpt = Annotated[str | None, typer.Option(
    "--supervise", help="generated or content (see `count --help`); default: the rule the "
    "vocabulary's counts were made with, else generated.")]
EvalLeadingOpt = Annotated[str | None, typer.Option(
    "--leading-assistant", help="drop or keep (see `count --help`); default: the "
    "vocabulary's counts' rule, else drop.")]


@dataclass
class _Vocab:
    t2d: Any
    counts: Any  # TokenCounts of the training data, when known
    preset: str | None
    label: str


def _vocab(run: Path | None, mapping: Path | None, counts: Path | None, k: int | None) -> _Vocab:
    from draftvocab.counts import TokenCounts
    from draftvocab.mapping import build_mapping, load_mapping

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


@dataclass
class _EvalRule:
    """How evaluation data is counted: by default as the vocabulary's own counts were."""

    template_kwargs: str | None = None
    supervise: str | None = None
    leading: str | None = None

    def spans(self, s: _Setup, counts):
        meta = counts.metadata if counts is not None else {}
        if self.template_kwargs is None and meta.get("template_kwargs"):
            s.template_kwargs = {**s.template_kwargs, **meta["template_kwargs"]}
        return _spans(s, supervise=self.supervise or meta.get("supervise"),
                      leading=self.leading or meta.get("leading_assistant"))


def _eval_counts(v: _Vocab, data: list[str], group_by: str | None, preset: str | None,
                 tokenizer: Path | None, chat_template: Path | None, config: Path | None,
                 workers: int | None, quiet: bool,
                 rule: _EvalRule | None = None) -> tuple[dict, Any]:
    """Supervised-token counts of the evaluation data per group (per file without --group-by),
    with a clear error if it is tokenised differently from the vocabulary's training counts."""
    from draftvocab.assets import tokenizer_fingerprint
    from draftvocab.conversations import ColumnMap, read_conversations
    from draftvocab.counts import count_by_group

    if not data:
        raise DraftVocabError("give the evaluation data (files or directories)")
    rule = rule or _EvalRule()
    from draftvocab.assets import config_vocab_size

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


class _Progressing:
    """Iterate conversations, advancing a `_Rates` bar (if any) by one per record."""

    def __init__(self, it, bar):
        self.it, self.bar = it, bar

    def __iter__(self):
        for x in self.it:
            if self.bar is not None:
                self.bar(1, 0)
            yield x


def _md_table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


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
    from draftvocab.atomic import atomic_files, check_output_dir
    from draftvocab.coverage import coverage_table

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
    from draftvocab.atomic import atomic_files, check_output_dir
    from draftvocab.coverage import missing_tokens

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


def _floats(text: str, name: str, kind=float) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DraftVocabError(f"{name} takes comma-separated numbers, got {text!r}") from None


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

    from draftvocab.assets import config_vocab_size
    from draftvocab.atomic import atomic_files, check_output_dir
    from draftvocab.conversations import read_conversations
    from draftvocab.counts import iter_supervised
    from draftvocab.flops import flops_breakdown
    from draftvocab.objective import utility_curve
    from draftvocab.plots import plot_stability
    from draftvocab.stability import SparseCounts, stability

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
    from draftvocab.atomic import atomic_files, check_output_dir
    from draftvocab.counts import TokenCounts
    from draftvocab.flops import flops_breakdown
    from draftvocab.objective import utility_curve
    from draftvocab.plots import plot_sweep
    from draftvocab.stability import sweep

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
    from draftvocab.atomic import atomic_write, check_output_file
    from draftvocab.report import build_report

    out = check_output_file(out or run / "report.html")
    atomic_write(out, build_report(run))
    sections = [n for n in ("coverage", "missing", "stability", "sweep")
                if (run / "analysis" / f"{n}.json").is_file()]
    if as_json:
        _emit_json({"out": str(out), "analyses": sections})
    else:
        err.print(f"report -> {escape(str(out))} (analyses: {', '.join(sections) or 'none'})")


# --- measured latency and predicted speed --------------------------------------------------------


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DraftVocabError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DraftVocabError("--device cuda: no CUDA device is available here")


def _measure(cfg: dict, ks: list[int], width: int, prefix: int, repeats: int, device: str,
             quiet: bool) -> dict:
    from rich.progress import Progress

    from draftvocab.latency import measure_latency

    with Progress(console=err, transient=True, disable=quiet) as bar:
        task = bar.add_task("timing draft forwards", total=len(ks))
        return measure_latency(cfg, ks, width=width, prefix=prefix, repeats=repeats,
                               device=device, progress=lambda n: bar.advance(task, n))


@app.command("latency", epilog="Examples:\n\n"
             "  draftvocab latency --preset smollm2-135m -o runs/latency\n\n"
             "  draftvocab latency --config config.json --width 8 --round 6851   "
             "# tree width 8; fastest multiple near 6851\n\n"
             "  draftvocab optimize --preset smollm2-135m --latency runs/latency/latency.json")
@_fail_cleanly
def latency_cmd(
    preset: PresetOpt = None, config: ConfigOpt = None,
    ks: Annotated[str | None, typer.Option(
        "--ks", help="Comma-separated k to time (default: 24 log-spaced values up to V).")
    ] = None,
    width: Annotated[int, typer.Option(
        "--width", help="Tokens per draft forward: 1 for a chain, top-k for a tree level.")] = 1,
    prefix: Annotated[int, typer.Option("--prefix", help="Draft KV-cache length.")] = 256,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed forwards per k (median).")
                       ] = 20,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    round_k: Annotated[int | None, typer.Option(
        "--round", help="Also time k's round-ups to multiples of 8…256 (within +2 %).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("latency"),
    as_json: JsonOpt = False,
) -> None:
    """Time one draft forward (fusion + layer + LM head of k rows) over a grid of k; fit a
    piecewise model, compare measured R(k) with the FLOPs R(k), flag GEMM-tiling anomalies."""
    from draftvocab.atomic import atomic_directory, check_output_dir
    from draftvocab.flops import flops_breakdown
    from draftvocab.latency import LatencyModel, default_grid, fastest_multiple
    from draftvocab.plots import plot_latency

    if width < 1 or repeats < 1 or prefix < 0:
        raise DraftVocabError("--width and --repeats must be >= 1, --prefix >= 0")
    _check_device(device)
    out = check_output_dir(out)
    s = _setup(preset, config, need_tokenizer=False)
    f = flops_breakdown(s.config_path)
    grid = _floats(ks, "--ks", int) if ks else default_grid(f.vocab_size)
    if not grid or min(grid) < 1 or max(grid) > f.vocab_size:
        raise DraftVocabError(f"--ks must be draft vocabulary sizes in [1, V={f.vocab_size:,}]")
    if round_k is not None and not 1 <= round_k <= f.vocab_size:
        raise DraftVocabError(f"--round must be in [1, V={f.vocab_size:,}], got {round_k}")
    result = _measure(s.config, grid, width, prefix, repeats, device, as_json)
    model = LatencyModel.from_json(result)
    fixed, per_row = model.linear_fit()
    result |= {"linear_fit": {"fixed_seconds": fixed, "seconds_per_row": per_row},
               "anomalies": model.anomalies(),
               "flops_fixed_share": f.fixed / f.total(), "measured_fixed_share":
               fixed / float(model(f.vocab_size))}
    if round_k is not None:
        result["rounding"] = fastest_multiple(
            round_k, lambda c: _measure(s.config, c, width, prefix, repeats, device,
                                        True)["seconds"], vocab=f.vocab_size)
    import numpy as np

    r_flops = np.asarray(f.latency_reduction(np.arange(f.vocab_size + 1)), dtype=float)
    with atomic_directory(out) as tmp:
        (tmp / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_latency(model.ks, model.seconds, model.reduction(), r_flops, tmp / "latency.png",
                     title=f"draft forward, width {width}, {device}")
    if as_json:
        _emit_json(result | {"out": str(out)})
        return
    rows = [[f"{k:,}", f"{1e3 * t:.3f}", f"{1 - t / result['seconds'][-1]:.3f}",
             f"{r_flops[k]:.3f}"] for k, t in zip(result["ks"], result["seconds"])]
    console.print(_md_table(["k", "ms", "R measured", "R FLOPs"], rows), markup=False,
                  highlight=False)
    err.print(f"fit: {1e3 * fixed:.3f} ms fixed + {1e6 * per_row:.3f} ms per 1,000 rows "
              f"(fixed share at k = V: measured {result['measured_fixed_share']:.0%}, FLOPs "
              f"{result['flops_fixed_share']:.0%}); {len(result['anomalies'])} tiling anomalies")
    if "rounding" in result:
        r = result["rounding"]
        err.print(f"fastest near {r['k']:,}: {r['fastest']:,} ({r['saving']:.1%} faster)")
    err.print(f"-> {escape(str(out))}/latency.json, latency.png")


@app.command("calibrate", epilog="Examples:\n\n"
             "  draftvocab calibrate runs/draft-full -o runs/calibration.json\n\n"
             "  draftvocab optimize --preset smollm2-135m --objective speedup "
             "--calibration runs/calibration.json")
@_fail_cleanly
def calibrate_cmd(
    draft: Annotated[Path, typer.Argument(help="A (preferably full-vocabulary) draft.",
                                          show_default=False)],
    target: Annotated[str, typer.Option("--target")] = "smollm2-135m",
    gamma: Annotated[int, typer.Option("--gamma", help="Chain length.")] = 2,
    per_category: Annotated[int, typer.Option("--per-category")] = 2,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 64,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("calibration.json"),
    as_json: JsonOpt = False,
) -> None:
    """Per-position acceptance α_j of a draft and the target's verify time, from chain
    decoding on Spec-Bench: the inputs of `optimize --objective speedup`."""
    import numpy as np

    from draftvocab.atomic import atomic_write, check_output_file
    from draftvocab.bench import load_questions
    from draftvocab.decode import SpeculativeDecoder
    from draftvocab.draft import aux_layers, load_draft, read_config, require_eagle3
    from draftvocab.latency import acceptance_from_lengths
    from draftvocab.target import load_target

    if gamma < 1 or per_category < 1 or max_new_tokens < 1:
        raise DraftVocabError("--gamma, --per-category and --max-new-tokens must be at least 1")
    check_output_file(out)
    require_eagle3(read_config(draft), "calibrate")
    tgt = load_target(target, layers=aux_layers([draft]))
    d = load_draft(draft, tgt)
    dec = SpeculativeDecoder(tgt, d, tree=False, gamma=gamma)
    lengths, verify, forwards, plain_s, plain_tok, prefill = [], 0.0, 0, 0.0, 0, 0.0
    plain = SpeculativeDecoder(tgt)
    from rich.progress import Progress

    qs = load_questions(per_category=per_category, turns=1)
    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("calibrating", total=len(qs))
        for q in qs:
            ids = tgt.prompt_ids([{"role": "user", "content": q.turns[0]}])
            if len(ids) + max_new_tokens > tgt.max_length:
                continue
            res = dec.generate(ids, max_new_tokens)
            lengths += res.accept_lengths
            verify += res.target_seconds - res.prefill_seconds
            forwards += res.target_forwards
            p = plain.generate(ids, max_new_tokens)
            plain_s, plain_tok = plain_s + p.seconds, plain_tok + len(p.tokens)
            prefill += p.prefill_seconds
            bar.advance(task)
    c = d.config
    if not lengths:
        raise DraftVocabError("no question fitted the target's context")
    result = {"draft": str(draft), "gamma": gamma,
              "alphas": acceptance_from_lengths(lengths, gamma),
              "accept_length": float(np.mean(lengths)), "t_verify_seconds": verify / forwards,
              "draft_vocab_size": c.draft_vocab_size, "vocab_size": c.vocab_size,
              "plain_tokens_per_s": plain_tok / plain_s, "rounds": len(lengths),
              "prefill_seconds_per_token": prefill / plain_tok,
              "max_new_tokens": max_new_tokens}
    atomic_write(out, json.dumps(result, indent=2) + "\n")
    if as_json:
        _emit_json(result | {"out": str(out)})
        return
    alphas = ", ".join(f"{a:.3f}" for a in result["alphas"])
    err.print(f"α = {alphas}; τ {result['accept_length']:.3f}; "
              f"verify {1e3 * result['t_verify_seconds']:.1f} ms; plain "
              f"{result['plain_tokens_per_s']:.1f} tok/s -> {escape(str(out))}")


# --- interoperability -------------------------------------------------------------------------


def _run_summary(source: Path) -> dict:
    f = source / "summary.json" if source.is_dir() else None
    if f is None or not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return {}


@app.command("export", epilog="Examples:\n\n"
             "  draftvocab export runs/smol-vocab --to specforge -o sf/      "
             "# vocab_mapping.pt + draft config.json\n\n"
             "  draftvocab export draft/ --to sglang -o draft-sglang/       # bf16 checkpoint\n\n"
             "  draftvocab export draft/ --to speculators -o draft-vllm/ "
             "--verifier HuggingFaceTB/SmolLM2-135M-Instruct\n\n"
             "  draftvocab export runs/smol-vocab --to frspec -o freq.pt   "
             "# SGLang --speculative-token-map")
@_fail_cleanly
def export_cmd(
    source: Annotated[Path, typer.Argument(
        help="A draft checkpoint (sglang, speculators; specforge), an `optimize` run directory "
        "or mapping file (specforge), or a run directory / counts file (frspec).",
        show_default=False)],
    to: Annotated[str, typer.Option("--to", help="specforge, sglang, speculators or frspec.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory (or .pt file for frspec).")],
    preset: PresetOpt = None, config: ConfigOpt = None,
    k: Annotated[int | None, typer.Option(
        "--k", help="frspec: ids to keep (default: the run's k*).")] = None,
    verifier: Annotated[str | None, typer.Option(
        "--verifier", help="speculators: the target's HF id or local directory, written into "
        "the config for vLLM.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a draft or vocabulary in SpecForge, SGLang, speculators (vLLM) or FR-Spec format."""
    from draftvocab import formats
    from draftvocab.atomic import check_output_dir, check_output_file

    if to not in formats.FORMATS:
        raise DraftVocabError(f"--to must be one of {', '.join(formats.FORMATS)}; got {to!r}")
    if not source.exists():
        raise DraftVocabError(f"not found: {source}")
    (check_output_file if to == "frspec" else check_output_dir)(out)
    run = _run_summary(source)
    if to == "sglang":
        summary = formats.export_sglang(source, out)
    elif to == "speculators":
        summary = formats.export_speculators(source, out, verifier=verifier)
    elif to == "specforge":
        target_config = None
        if not (source / "model.safetensors").is_file():
            inputs = run.get("inputs") or {}
            if preset is None and config is None and inputs.get("preset"):
                preset = inputs["preset"]
            target_config = _setup(preset, config, need_tokenizer=False).config
        summary = formats.export_specforge(source, out, target_config=target_config)
    else:
        from draftvocab.counts import TokenCounts

        counts_file = source / "counts.safetensors" if source.is_dir() else source
        k = k or run.get("k")
        if k is None:
            raise DraftVocabError("frspec needs --k (or an `optimize` run directory)")
        summary = formats.export_frspec(TokenCounts.load(counts_file).counts, int(k), out)
    if as_json:
        _emit_json(summary)
        return
    err.print(f"{to}: k = {summary['draft_vocab_size']:,} of V = {summary['vocab_size']:,} "
              f"-> {escape(summary['out'])}")
    if to == "speculators" and verifier is None:
        err.print("[yellow]note:[/yellow] no --verifier given: set speculators_config.verifier."
                  "name_or_path to the target before loading it in vLLM / speculators")


@app.command("import", epilog="Examples:\n\n"
             "  draftvocab import specforge-ckpt/ -o draft/ --mapping vocab_mapping.pt\n\n"
             "  draftvocab import vllm-speculator/ -o draft/\n\n"
             "  draftvocab bench --draft theirs=draft/")
@_fail_cleanly
def import_cmd(
    source: Annotated[Path, typer.Argument(
        help="A SpecForge (LlamaForCausalLMEagle3) or speculators (eagle3) checkpoint "
        "directory.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Our draft checkpoint directory.")],
    mapping: Annotated[Path | None, typer.Option(
        "--mapping", help="vocab_mapping.pt/.safetensors overriding the checkpoint's d2t/t2d.")
    ] = None,
    target_layers: Annotated[str | None, typer.Option(
        "--target-layers", help="Aux layer ids, e.g. 1,14,26, if the config does not say.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read a SpecForge / speculators EAGLE-3 draft into this engine (bench, retrofit it)."""
    from draftvocab.atomic import check_output_dir
    from draftvocab.formats import import_draft

    check_output_dir(out)
    layers = None
    if target_layers:
        try:
            layers = tuple(int(x) for x in target_layers.split(","))
        except ValueError:
            raise DraftVocabError(f"--target-layers takes integers like 1,14,26; got "
                                  f"{target_layers!r}") from None
    summary = import_draft(source, out, mapping=mapping, target_layers=layers)
    if as_json:
        _emit_json(summary)
    else:
        err.print(f"{summary['format']} draft, k = {summary['draft_vocab_size']:,} of V = "
                  f"{summary['vocab_size']:,}, layers {summary['target_layers']} -> "
                  f"{escape(summary['out'])}")


@app.command("retrofit", epilog="Examples:\n\n"
             "  draftvocab retrofit draft/ --counts runs/domain/counts.safetensors -o trimmed/\n\n"
             "  draftvocab retrofit draft/ --counts counts.safetensors --k 4096 -o trimmed/ "
             "--no-bench")
@_fail_cleanly
def retrofit_cmd(
    draft: Annotated[Path, typer.Argument(help="Our draft checkpoint (see `import`).",
                                          show_default=False)],
    counts: Annotated[Path, typer.Option(
        "--counts", help="Counts of the user's domain (file or `optimize` run directory).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Trimmed draft directory.")],
    k: Annotated[int | None, typer.Option("--k", help="Fixed k (default: optimise).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of coverage in U.")] = 0.5,
    c_min: Annotated[float, typer.Option("--c-min", help="Minimum coverage.")] = 0.9,
    bench: Annotated[bool, typer.Option(
        "--bench/--no-bench", help="Measure τ and tok/s before and after on Spec-Bench.")] = True,
    target: Annotated[str, typer.Option("--target", help="Target for --bench.")] = "smollm2-135m",
    per_category: Annotated[int, typer.Option("--per-category", help="Bench questions per "
                                              "category.")] = 2,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 64,
    runs: Annotated[int, typer.Option("--runs", help="Independent bench runs.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Trim an existing draft's vocabulary without training (slice LM-head rows, rewrite
    d2t/t2d), choosing k with the optimiser restricted to the draft's own tokens."""
    import dataclasses

    from draftvocab.atomic import atomic_directory, check_output_dir
    from draftvocab.counts import TokenCounts
    from draftvocab.objective import utility_curve
    from draftvocab.retrofit import retrofit_draft

    if per_category < 1 or runs < 1 or max_new_tokens < 1:
        raise DraftVocabError("--per-category, --runs and --max-new-tokens must be at least 1")
    utility_curve(*([__import__("numpy").zeros(1)] * 2), alpha, c_min)
    check_output_dir(out)
    counts_file = counts / "counts.safetensors" if counts.is_dir() else counts
    domain = TokenCounts.load(counts_file).counts
    # The trimmed draft is built and benchmarked in a staging directory, and swapped in last.
    with atomic_directory(out) as stage:
        trimmed = stage / "draft"
        res = retrofit_draft(draft, domain, trimmed, k=k, alpha=alpha, c_min=c_min)
        summary = {**res.to_json(), "out": str(out)}
        if bench:
            summary["bench"] = _bench_retrofit(draft, trimmed, target, per_category,
                                               max_new_tokens, runs)
        for f in trimmed.iterdir():
            f.rename(stage / f.name)
        trimmed.rmdir()
    res = dataclasses.replace(res, out=str(out))
    if as_json:
        _emit_json(summary)
        return
    err.print(f"k {res.k_before:,} -> {res.k_after:,}: coverage {res.coverage_before:.4f} -> "
              f"{res.coverage_after:.4f}, draft FLOPs -{res.reduction_vs_before:.1%} "
              f"-> {escape(res.out)}")
    for name in ("plain", "before", "after") if bench else ():
        row = summary["bench"][name]
        err.print(f"  {name:7s} {row['tokens_per_s']:6.1f} tok/s  τ {row['accept_length']:.2f}"
                  f"  draft share {row['draft_share']:.0%}")


def _bench_retrofit(draft: Path, trimmed: Path, target: str, per_category: int,
                    max_new_tokens: int, runs: int) -> dict:
    from draftvocab.bench import load_questions, run_benchmark
    from draftvocab.decode import SpeculativeDecoder
    from draftvocab.draft import aux_layers, load_draft
    from draftvocab.target import load_target

    tgt = load_target(target, layers=aux_layers([draft, trimmed]))
    variants = {"plain": SpeculativeDecoder(tgt),
                "before": SpeculativeDecoder(tgt, load_draft(draft, tgt), tree=False, gamma=2),
                "after": SpeculativeDecoder(tgt, load_draft(trimmed, tgt), tree=False, gamma=2)}
    qs = load_questions(per_category=per_category, turns=1)
    report = run_benchmark(tgt, variants, qs, max_new_tokens=max_new_tokens, runs=runs)
    overall = report["table"]["overall"]
    result = {name: {key: overall[name][key][0] for key in
                     ("tokens_per_s", "accept_length", "draft_share")} for name in variants}
    result["greedy_identical"] = not any(report["greedy_mismatches"].values())
    return result


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


def run(args: list[str] | None = None) -> int:
    """Run the command line (without exiting); the exit code. `__main__` calls it."""
    try:
        result = app(args=args, standalone_mode=False)
    except typer.Abort:  # the command-line parser's own reaction to an interrupt
        raise KeyboardInterrupt from None
    except typer.exceptions.TyperException as exc:  # usage errors: its message, exit 2
        if not hasattr(exc, "show"):
            raise
        exc.show()
        return exc.exit_code
    return result if isinstance(result, int) else 0


def main() -> None:
    from draftvocab.__main__ import main as entry

    entry()


if __name__ == "__main__":
    main()
