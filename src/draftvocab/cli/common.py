"""Shared pieces of the command line: the Typer app, consoles, option types, the
resolution of --preset/--tokenizer/--config/DATA, one-line errors, progress and JSON output.
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
    from draftvocab.chat.messages import parse_template_kwargs
    from draftvocab.core.assets import load_config, load_tokenizer
    from draftvocab.engine.presets import DEFAULT_PRESET, get_preset

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
                from draftvocab.core.assets import read_chat_template
                s.tokenizer.chat_template = read_chat_template(chat_template)
            s.template_kwargs = dict(p.template_kwargs)
        s.template_kwargs.update(extra_kwargs)
    if data:
        s.data = data
    elif p is not None:
        s.data = [str(p.dataset_path())]
        s.skip_bad_lines = p.skip_bad_lines
    return s


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
    from draftvocab.chat.spans import ChatSpans

    return ChatSpans(s.tokenizer, template_kwargs=s.template_kwargs, include_eot=include_eot,
                     supervise=supervise or "generated", leading_assistant=leading or "drop")


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


def _endpoint(url: str, model: str | None, api_key: str | None):
    """An `endpoint.Endpoint` checked before any work: the server answers /v1/models and
    serves the named model (default: the first it lists)."""
    from draftvocab.engine.endpoint import Endpoint, served_models

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
    from draftvocab.engine.blockdecode import decoder_for
    from draftvocab.engine.draft import load_draft

    draft = load_draft(draft_dir, target) if draft_dir else None
    chooser = None
    if bandit:
        from draftvocab.engine.bandit import BudgetBandit
        chooser = BudgetBandit()
    return decoder_for(target, draft, tree=tree, depth=depth, topk=topk,
                       total_tokens=total_tokens, gamma=gamma, blocks=blocks, branch=branch,
                       policy=policy, bandit=chooser, adaptive=adaptive)


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


def _floats(text: str, name: str, kind=float) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DraftVocabError(f"{name} takes comma-separated numbers, got {text!r}") from None


def _measure(cfg: dict, ks: list[int], width: int, prefix: int, repeats: int, device: str,
             quiet: bool) -> dict:
    from rich.progress import Progress

    from draftvocab.engine.latency import measure_latency

    with Progress(console=err, transient=True, disable=quiet) as bar:
        task = bar.add_task("timing draft forwards", total=len(ks))
        return measure_latency(cfg, ks, width=width, prefix=prefix, repeats=repeats,
                               device=device, progress=lambda n: bar.advance(task, n))


def _run_summary(source: Path) -> dict:
    f = source / "summary.json" if source.is_dir() else None
    if f is None or not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return {}
