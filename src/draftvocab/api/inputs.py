"""The inputs every command resolves: preset / tokenizer / config / datasets, the supervision
rule, token counts of a dataset, and the vocabulary an analysis evaluates.

Owns the defaults (`--preset llama3.1-8b` when nothing is given), the checks that a tokenizer,
a config and a vocabulary belong to the same model, and the progress-callback protocol the
library calls report through. It prints nothing and parses no command-line text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from draftvocab.core.errors import DraftVocabError


class Progress(Protocol):
    """Progress callback of the library calls: `advance` more units done in `stage` (0 starts
    or restarts the stage, with its `total` if known, 0 for a step with no measurable
    progress); `tokens` counted along the way."""

    def __call__(self, stage: str, advance: int, total: int | None = None,
                 tokens: int = 0) -> None: ...


def quiet(stage: str, advance: int, total: int | None = None, tokens: int = 0) -> None:
    """The `Progress` callback of a caller who asked for none."""


@dataclass
class Setup:
    """Everything resolved from preset / tokenizer / config / data."""

    preset: Any
    config_path: Path
    config: dict
    tokenizer: Any = None
    template_kwargs: dict | None = None
    data: list[str] | None = None
    skip_bad_lines: bool = False

    @property
    def vocab_size(self) -> int:
        from draftvocab.core.assets import config_vocab_size

        return config_vocab_size(self.config, str(self.config_path))


def setup(preset: str | None, config: Path | None, tokenizer: Path | None = None,
          chat_template: Path | None = None, data: list[str] | None = None,
          need_tokenizer: bool = True, template_kwargs: str | None = None) -> Setup:
    """Resolve the model and data: explicit paths win over the preset's, and with neither the
    default preset (Llama-3.1-8B, ShareGPT) is used, all offline.

    Example:
        >>> setup("smollm2-135m", None, need_tokenizer=False).vocab_size
        49152
    """
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
    s = Setup(preset=p, config_path=config_path, config=load_config(config_path))
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


def chat_spans(s: Setup, *, include_eot: bool = True, supervise: str | None = "generated",
               leading: str | None = "drop"):
    """The supervision rule for this run (the template is checked on a probe conversation)."""
    from draftvocab.chat.spans import ChatSpans

    return ChatSpans(s.tokenizer, template_kwargs=s.template_kwargs, include_eot=include_eot,
                     supervise=supervise or "generated", leading_assistant=leading or "drop")


class Progressing:
    """Iterate conversations, reporting one unit of `stage` per record."""

    def __init__(self, it: Iterable, progress: Progress | None, stage: str = "counting"):
        self.it, self.progress, self.stage = it, progress or quiet, stage

    def __iter__(self) -> Iterator:
        for x in self.it:
            self.progress(self.stage, 1)
            yield x


def count_data(s: Setup, *, max_samples: int | None = None, seed: int = 0,
               columns: str | None = None, role_map: list[str] | None = None,
               skip_bad_lines: bool = False, include_eot: bool = True,
               workers: int | None = None, supervise: str = "generated",
               leading: str = "drop", progress: Progress | None = None):
    """TokenCounts of the supervised tokens of every dataset of `s` (merged), in local
    processes."""
    from draftvocab.chat.conversations import ColumnMap, parse_role_map, read_conversations
    from draftvocab.vocab.counts import count_tokens, merge_counts

    progress = progress or quiet
    vocab = s.vocab_size
    spans = chat_spans(s, include_eot=include_eot, supervise=supervise, leading=leading)
    parts = []
    for source in s.data:
        reader = read_conversations(
            source, columns=ColumnMap.parse(columns) if columns else None,
            role_map=parse_role_map(role_map) if role_map else None,
            skip_bad_lines=skip_bad_lines or s.skip_bad_lines,
            max_samples=max_samples, seed=seed,
        )
        progress("counting", 0, max_samples)
        parts.append(count_tokens(reader, spans, vocab, workers=workers,
                                  progress=lambda n, t: progress("counting", n, tokens=t),
                                  dataset_fingerprint=reader.fingerprint()))
    return parts[0] if len(parts) == 1 else merge_counts(parts)


def count_on_engine(s: Setup, engine: str, *, columns: str | None = None,
                    role_map: list[str] | None = None, include_eot: bool = True,
                    workers: int | None = None, max_samples: int | None = None,
                    supervise: str = "generated", leading: str = "drop",
                    progress: Progress | None = None):
    """TokenCounts of the datasets of `s` on HF datasets or Ray (files, not conversations)."""
    import os

    from draftvocab.chat.conversations import ColumnMap, parse_role_map
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
    vocab = s.vocab_size
    spans = chat_spans(s, include_eot=include_eot, supervise=supervise, leading=leading)
    kwargs = {"columns": ColumnMap.parse(columns) if columns else None,
              "role_map": parse_role_map(role_map) if role_map else None}
    (progress or quiet)(f"counting on {engine}", 0, 0)
    if engine == "datasets":
        return count_with_datasets(files, spans, vocab, num_proc=workers, **kwargs)
    return count_with_ray(files, spans, vocab, address=os.environ.get("RAY_ADDRESS"), **kwargs)


def run_summary(source: Path) -> dict:
    """summary.json of an `optimize` run directory, or {} for anything else."""
    f = source / "summary.json" if source.is_dir() else None
    if f is None or not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return {}


@dataclass
class Vocabulary:
    """A draft vocabulary under evaluation: its t2d mask and what is known of its origin."""

    t2d: Any
    counts: Any  # TokenCounts of the training data, when known
    preset: str | None
    label: str


def vocabulary(run: Path | None = None, mapping: Path | None = None,
               counts: Path | None = None, k: int | None = None) -> Vocabulary:
    """The vocabulary of an `optimize` run, a mapping file, or the top-k of a counts file."""
    from draftvocab.vocab.counts import TokenCounts
    from draftvocab.vocab.mapping import build_mapping, load_mapping

    if sum(x is not None for x in (run, mapping, counts)) != 1:
        raise DraftVocabError("give exactly one of --run, --mapping, or --counts with --k")
    if run is not None:
        summary = run_summary(run)
        if not summary:
            raise DraftVocabError(f"{run} is not an `optimize` output directory (no summary.json)")
        c = TokenCounts.load(run / "counts.safetensors")
        m = load_mapping(run, vocab_size=c.vocab_size)
        return Vocabulary(m.t2d, c, (summary.get("inputs") or {}).get("preset"),
                          f"{run} (k = {m.k:,})")
    if mapping is not None:
        m = load_mapping(mapping)
        return Vocabulary(m.t2d, None, None, f"{mapping} (k = {m.k:,})")
    if k is None:
        raise DraftVocabError("--counts needs --k")
    c = TokenCounts.load(counts)
    if not 1 <= k <= c.vocab_size:
        raise DraftVocabError(f"k must be in [1, V={c.vocab_size}], got {k}")
    return Vocabulary(build_mapping(c.counts, k).t2d, c, None, f"top {k:,} of {counts}")


@dataclass
class EvalRule:
    """How evaluation data is counted: by default as the vocabulary's own counts were."""

    template_kwargs: str | None = None
    supervise: str | None = None
    leading: str | None = None

    def spans(self, s: Setup, counts):
        meta = counts.metadata if counts is not None else {}
        if self.template_kwargs is None and meta.get("template_kwargs"):
            s.template_kwargs = {**s.template_kwargs, **meta["template_kwargs"]}
        return chat_spans(s, supervise=self.supervise or meta.get("supervise"),
                          leading=self.leading or meta.get("leading_assistant"))


def eval_counts(v: Vocabulary, data: list[str] | None, group_by: str | None = None,
                preset: str | None = None, tokenizer: Path | None = None,
                chat_template: Path | None = None, config: Path | None = None,
                workers: int | None = None, rule: EvalRule | None = None,
                progress: Progress | None = None) -> tuple[dict, Any]:
    """Supervised-token counts of the evaluation data per group (per file without group_by),
    with a clear error if it is tokenised differently from the vocabulary's training counts."""
    from draftvocab.chat.conversations import ColumnMap, read_conversations
    from draftvocab.core.assets import tokenizer_fingerprint
    from draftvocab.vocab.counts import count_by_group

    if not data:
        raise DraftVocabError("give the evaluation data (files or directories)")
    rule = rule or EvalRule()
    s = setup(preset or v.preset, config, tokenizer, chat_template, data,
              template_kwargs=rule.template_kwargs)
    vocab = int(v.t2d.size)
    if vocab != s.vocab_size:
        raise DraftVocabError(
            f"the vocabulary {v.label} is over V={vocab:,} but the target config "
            f"{s.config_path} has vocab_size {s.vocab_size:,}: give the --preset or --config "
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
        (progress or quiet)("counting", 0)
        found = count_by_group(Progressing(reader, progress), spans, vocab, workers=workers)
        for name, c in found.items():
            key = name if group_by else Path(source).stem
            groups[key] = groups[key] + c if key in groups else c
    return groups, s.tokenizer


def numbers(text: str | list | tuple, name: str, kind: type = float) -> list:
    """Comma-separated numbers ('0.5,0.9') as a list; a list is passed through."""
    if not isinstance(text, str):
        return [kind(x) for x in text]
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DraftVocabError(f"{name} takes comma-separated numbers, got {text!r}") from None
