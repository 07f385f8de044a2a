"""Shared pieces of the command line: the Typer app, consoles, option types, one-line errors,
progress bars and JSON output. Resolving --preset/--tokenizer/--config/DATA is library work
(`draftvocab.api.inputs`); nothing here computes anything.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from draftvocab.core.errors import DraftVocabError

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
        from draftvocab.core import interrupts
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


def _counting_rate(done: int, tokens: int, dt: float) -> str:
    return f"{done / dt:,.0f} conv/s  {tokens / dt / 1e3:,.0f}k supervised tok/s"


class _Bars:
    """The progress callback the CLI hands to library calls (`api.inputs.Progress`): a
    transient rich line per stage, shown from the stage's first report and started afresh
    each time a stage (re)starts (a spinner for total 0); stages that report tokens show
    `rate(done, tokens, seconds)` (default: conv/s and supervised tok/s). Quiet: nothing."""

    def __init__(self, quiet: bool = False, rate: Callable[[int, int, float], str] = _counting_rate):
        self.progress = self.task = None
        self.stage: str | None = None
        self.quiet, self.rate = quiet, rate

    def _start(self, stage: str, total: int | None) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.__exit__(None, None, None)
        self.stage, self.task = stage, None
        if total == 0:  # no measurable progress: a spinner
            self.progress = err.status(stage)
            self.progress.start()
            return
        self.progress = Progress(
            TextColumn(f"[bold]{escape(stage)}[/bold]"), BarColumn(),
            TextColumn("{task.completed:,.0f}"), TextColumn("[cyan]{task.fields[rate]}"),
            TimeElapsedColumn(), console=err, transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(stage, total=total, rate="")
        self.start, self.done, self.tokens = time.perf_counter(), 0, 0

    def __call__(self, stage: str, advance: int, total: int | None = None,
                 tokens: int = 0) -> None:
        if self.quiet:
            return
        if stage != self.stage or (advance == 0 and not tokens):  # a token-only report goes on
            self._start(stage, total)
        if (advance or tokens) and self.task is not None:
            self.done += advance
            self.tokens += tokens
            dt = max(time.perf_counter() - self.start, 1e-9)
            rate = self.rate(self.done, self.tokens, dt) if self.tokens else ""
            self.progress.update(self.task, advance=advance, rate=rate)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _bars(quiet: bool):
    """A `_Bars` callback for a library call, or (quiet, e.g. --json) a context yielding None."""
    return contextlib.nullcontext() if quiet else _Bars()


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
