"""The vocabulary commands as library calls: count, merge, flops, optimize, mapping.

Each call resolves its inputs (`api.inputs`), runs the vocab stage and writes its artefacts
atomically, returning a result with `to_json()` — the exact JSON `draftvocab CMD --json`
prints. Nothing here prints; progress goes through an optional callback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from draftvocab.api.inputs import Progress, count_data, count_on_engine, setup
from draftvocab.core.errors import DraftVocabError


def _data_list(data: str | Path | list | None) -> list[str] | None:
    if data is None or isinstance(data, list):
        return data
    return [str(data)]


def counts_summary(c) -> dict[str, Any]:
    """What a count found: totals, the supervision rule, and what it skipped or left out."""
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


@dataclass
class CountResult:
    """Token counts and where they were written (None: not written)."""

    counts: Any  # TokenCounts
    out: Path | None = None
    parts: list[Path] | None = None

    def to_json(self) -> dict[str, Any]:
        extra = {"parts": [str(p) for p in self.parts]} if self.parts is not None else {}
        out = str(self.out) if self.out is not None else None
        return {**counts_summary(self.counts), "out": out, **extra}


def count(data: str | Path | list | None = None, *, out: Path | None = None,
          preset: str | None = None, tokenizer: Path | None = None,
          chat_template: Path | None = None, config: Path | None = None,
          max_samples: int | None = None, seed: int = 0, columns: str | None = None,
          role_map: list[str] | None = None, skip_bad_lines: bool = False, eot: bool = True,
          workers: int | None = None, template_kwargs: str | None = None,
          supervise: str = "generated", leading_assistant: str = "drop",
          engine: str = "local", progress: Progress | None = None) -> CountResult:
    """Count the tokens the target generates for each assistant turn of the data (default:
    the preset's dataset), saving them to `out` if given.

    Example:
        >>> from draftvocab import count
        >>> count(preset="smollm2-135m", max_samples=50).counts.vocab_size
        49152
    """
    from draftvocab.core.atomic import check_output_file

    if out is not None:
        check_output_file(out)  # before any work: a bad output path costs nothing
    s = setup(preset, config, tokenizer, chat_template, _data_list(data),
              template_kwargs=template_kwargs)
    rule = {"supervise": supervise, "leading": leading_assistant}
    if engine == "local":
        c = count_data(s, max_samples=max_samples, seed=seed, columns=columns,
                       role_map=role_map, skip_bad_lines=skip_bad_lines, include_eot=eot,
                       workers=workers, progress=progress, **rule)
    else:
        c = count_on_engine(s, engine, columns=columns, role_map=role_map, include_eot=eot,
                            workers=workers, max_samples=max_samples, progress=progress, **rule)
    if out is not None:
        c.save(out)
    return CountResult(c, out)


def merge(parts: list[Path], out: Path) -> CountResult:
    """Sum counts files from several shards (same tokenizer, template and V) into `out`."""
    from draftvocab.core.atomic import check_output_file
    from draftvocab.vocab.counts import TokenCounts, merge_counts

    check_output_file(out)
    c = merge_counts([TokenCounts.load(p) for p in parts])
    c.save(out)
    return CountResult(c, out, list(parts))


@dataclass
class FlopsReport:
    """The draft's per-token FLOPs, optionally also at draft vocabulary size k."""

    flops: Any  # DraftFlops
    k: int | None = None

    def to_json(self) -> dict[str, Any]:
        f, k = self.flops, self.k
        rows = [{"component": n, "flops": v, "fraction": fr} for n, v, fr in f.rows(k)]
        extra = {"k": k, "latency_reduction": float(f.latency_reduction(k))} if k else {}
        return {**f.to_json(), "rows": rows, **extra}


def flops(config: Path | None = None, *, preset: str | None = None,
          k: int | None = None) -> FlopsReport:
    """Per-token FLOPs of the EAGLE-3 draft of a target config (default: the preset's).

    Example:
        >>> from draftvocab.api.vocab import flops
        >>> flops(preset="llama3.1-8b", k=32000).flops.vocab_size
        128256
    """
    from draftvocab.vocab.flops import flops_breakdown

    s = setup(preset, config, need_tokenizer=False)
    f = flops_breakdown(s.config_path)  # path: errors name the file
    if k is not None and not 1 <= k <= f.vocab_size:
        raise DraftVocabError(f"k must be in [1, V={f.vocab_size}], got {k}")
    return FlopsReport(f, k)


@dataclass
class MappingResult:
    """A top-k mapping written to a directory."""

    k: int
    vocab_size: int
    coverage: float
    out: Path
    files: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "vocab_size": self.vocab_size, "coverage": self.coverage,
                "out": str(self.out), "files": self.files}


def mapping(counts: Path, k: int, out: Path, *, preset: str | None = None,
            tokenizer: Path | None = None) -> MappingResult:
    """Top-k of a counts file -> vocab_mapping.pt/.safetensors + draft_vocab.json in `out`."""
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
    return MappingResult(k, c.vocab_size, coverage, out, sorted(p.name for p in files))


def read_latency(path: Path, vocab: int) -> dict:
    """A latency.json from `draftvocab latency`, checked to be for this target's V."""
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


def read_calibration(calibration: Path | None, vocab: int) -> dict:
    """A calibration.json from `draftvocab calibrate`, checked to be for this target's V."""
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
