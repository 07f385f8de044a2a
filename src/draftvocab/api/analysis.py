"""The analysis commands as library calls: coverage, missing, stability, sweep, report.

Each call resolves the vocabulary and the evaluation data (`api.inputs`), runs the analysis
stage and writes its JSON / markdown / PNG atomically (default: RUN/analysis), returning a
result whose `to_json()` is what `draftvocab CMD --json` prints. Nothing here prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from draftvocab.api.inputs import (
    EvalRule,
    Progress,
    Progressing,
    chat_spans,
    eval_counts,
    numbers,
    run_summary,
    setup,
    vocabulary,
)
from draftvocab.api.vocab import _data_list
from draftvocab.core.errors import DraftVocabError


@dataclass
class Analysis:
    """An analysis written to `out`: its JSON result and, where it has one, its markdown."""

    result: dict[str, Any]
    out: Path
    markdown: str = ""

    def to_json(self) -> dict[str, Any]:
        return self.result | {"out": str(self.out)}


def _out_dir(out: Path | None, run: Path | None) -> Path:
    from draftvocab.core.atomic import check_output_dir

    return check_output_dir(out or ((run / "analysis") if run else Path("analysis")))


def coverage(data: str | Path | list | None = None, *, run: Path | None = None,
             mapping: Path | None = None, counts: Path | None = None, k: int | None = None,
             group_by: str | None = None, train_data: list[Path] | None = None,
             preset: str | None = None, tokenizer: Path | None = None,
             chat_template: Path | None = None, config: Path | None = None,
             out: Path | None = None, workers: int | None = None,
             template_kwargs: str | None = None, supervise: str | None = None,
             leading_assistant: str | None = None,
             progress: Progress | None = None) -> Analysis:
    """Coverage of a vocabulary on evaluation data, per group and combined (the paper's Tables
    4 and 5) -> coverage.json, coverage.md."""
    from draftvocab.analysis.coverage import coverage_table
    from draftvocab.analysis.tables import md_table, pct
    from draftvocab.core.atomic import atomic_files

    v = vocabulary(run, mapping, counts, k)
    rule = EvalRule(template_kwargs, supervise, leading_assistant)
    if train_data and not group_by:
        raise DraftVocabError("--train-data needs --group-by (the domains to compare)")
    out = _out_dir(out, run)
    groups, _ = eval_counts(v, _data_list(data), group_by, preset, tokenizer, chat_template,
                            config, workers, rule, progress)
    train = None
    if train_data:
        train, _ = eval_counts(v, [str(p) for p in train_data], group_by, preset, tokenizer,
                               chat_template, config, workers, rule, progress)
    rows = coverage_table(groups, v.t2d, train)
    result = {"vocabulary": v.label, "group_by": group_by, "rows": [r.to_json() for r in rows]}
    head = ["set", "tokens", "coverage", "unique tokens", "unique coverage"]
    if train:
        head.append("share of training tokens")
    table = md_table(head, [[r.name, f"{r.tokens:,}", pct(r.coverage), f"{r.unique_tokens:,}",
                             pct(r.unique_coverage)] + ([pct(r.train_share)] if train else [])
                            for r in rows])
    md = f"Vocabulary: {v.label}\n\n{table}"
    with atomic_files(out) as stage:
        (stage / "coverage.json").write_text(json.dumps(result, indent=2) + "\n")
        (stage / "coverage.md").write_text(md)
    return Analysis(result, out, md)


def missing(data: str | Path | list | None = None, *, run: Path | None = None,
            mapping: Path | None = None, counts: Path | None = None, k: int | None = None,
            group_by: str | None = None, top: int = 20, preset: str | None = None,
            tokenizer: Path | None = None, chat_template: Path | None = None,
            config: Path | None = None, out: Path | None = None, workers: int | None = None,
            template_kwargs: str | None = None, supervise: str | None = None,
            leading_assistant: str | None = None,
            progress: Progress | None = None) -> Analysis:
    """The most frequent evaluation tokens the vocabulary cannot emit, per set ->
    missing.json, missing.md."""
    from draftvocab.analysis.missing import missing_report
    from draftvocab.core.atomic import atomic_files

    if top < 1:
        raise DraftVocabError("--top must be at least 1")
    v = vocabulary(run, mapping, counts, k)
    out = _out_dir(out, run)
    groups, tok = eval_counts(v, _data_list(data), group_by, preset, tokenizer, chat_template,
                              config, workers,
                              EvalRule(template_kwargs, supervise, leading_assistant), progress)
    result, md = missing_report(groups, v.t2d, top, lambda ids: [tok.decode([i]) for i in ids],
                                v.label)
    with atomic_files(out) as stage:
        (stage / "missing.json").write_text(
            json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        (stage / "missing.md").write_text(md)
    return Analysis(result, out, md)


def stability(data: str | Path | list | None = None, *, preset: str | None = None,
              tokenizer: Path | None = None, chat_template: Path | None = None,
              config: Path | None = None, sizes: str | list[int] | None = None,
              repeats: int = 5, alpha: float = 0.5, c_min: float = 0.9,
              tolerance: float = 0.02, max_samples: int | None = None, seed: int = 0,
              skip_bad_lines: bool = False, workers: int | None = None,
              template_kwargs: str | None = None, supervise: str = "generated",
              leading_assistant: str = "drop", out: Path = Path("analysis"),
              progress: Progress | None = None) -> Analysis:
    """k* as a function of the number of training conversations (the paper's Fig. 3) ->
    stability.json, stability.png."""
    from draftvocab.analysis.plots import plot_stability
    from draftvocab.analysis.stability import SparseCounts
    from draftvocab.analysis.stability import stability as k_stability
    from draftvocab.chat.conversations import read_conversations
    from draftvocab.core.atomic import atomic_files, check_output_dir
    from draftvocab.vocab.counts import iter_supervised
    from draftvocab.vocab.flops import flops_breakdown
    from draftvocab.vocab.objective import check_weights

    if repeats < 1:
        raise DraftVocabError(f"--repeats must be at least 1, got {repeats}")
    size_list = numbers(sizes, "--sizes", int) if sizes else None
    if size_list is not None and (not size_list or min(size_list) < 1):
        raise DraftVocabError(f"--sizes must be positive numbers of conversations, got {sizes!r}")
    check_weights(alpha, c_min)
    out = check_output_dir(out)
    s = setup(preset, config, tokenizer, chat_template, _data_list(data),
              template_kwargs=template_kwargs)
    vocab = s.vocab_size
    flops = flops_breakdown(s.config_path)
    spans = chat_spans(s, supervise=supervise, leading=leading_assistant)
    per_conv = []
    for source in s.data:
        reader = read_conversations(source, skip_bad_lines=skip_bad_lines or s.skip_bad_lines,
                                    max_samples=max_samples, seed=seed)
        if progress:
            progress("counting", 0, max_samples)
        per_conv += [ids for _, ids in iter_supervised(Progressing(reader, progress), spans,
                                                       vocab, workers=workers)]
    data_sparse = SparseCounts.from_conversations(per_conv)
    del per_conv
    if progress:
        progress("subsets", 0, len(size_list) if size_list else None)
    result = k_stability(data_sparse, vocab, flops, sizes=size_list, repeats=repeats,
                         alpha=alpha, c_min=c_min, seed=seed, tolerance=tolerance,
                         progress=(lambda n: progress("subsets", n)) if progress else None)
    with atomic_files(out) as stage:
        (stage / "stability.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_stability(result, stage / "stability.png")
    return Analysis(result, out)


def sweep(run: Path | None = None, *, counts: Path | None = None, preset: str | None = None,
          config: Path | None = None,
          alphas: str | list[float] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
          c_mins: str | list[float] = "0.8,0.85,0.9,0.92,0.95,0.97,0.99",
          out: Path | None = None) -> Analysis:
    """k* over a grid of α and c_min (exact solver) -> sweep.json, sweep.png; `result` is
    {"rows": [{alpha, c_min, k, ...}]}."""
    from draftvocab.analysis.plots import plot_sweep
    from draftvocab.analysis.stability import sweep as k_sweep
    from draftvocab.analysis.tables import sweep_table
    from draftvocab.core.atomic import atomic_files
    from draftvocab.vocab.counts import TokenCounts
    from draftvocab.vocab.flops import flops_breakdown
    from draftvocab.vocab.objective import check_weights

    if (run is None) == (counts is None):
        raise DraftVocabError("give --run or --counts")
    if run is not None:
        inputs = run_summary(run).get("inputs") or {}
        counts = run / "counts.safetensors"
        if preset is None and config is None:
            preset = inputs.get("preset")
            config = None if preset else Path(inputs["config"]) if inputs.get("config") else None
    out = _out_dir(out, run)
    alpha_list, c_min_list = numbers(alphas, "--alphas"), numbers(c_mins, "--c-mins")
    for a in alpha_list:
        for cm in c_min_list:
            check_weights(a, cm)
    s = setup(preset, config, need_tokenizer=False)
    flops = flops_breakdown(s.config_path)
    c = TokenCounts.load(counts)
    if c.vocab_size != flops.vocab_size:
        raise DraftVocabError(f"the counts are over V={c.vocab_size:,} but {s.config_path} has "
                              f"vocab_size {flops.vocab_size:,}: give the model's --preset or "
                              "--config")
    rows = k_sweep(c.counts, flops, alpha_list, c_min_list)
    with atomic_files(out) as stage:
        (stage / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
        plot_sweep(rows, stage / "sweep.png")
    return Analysis({"rows": rows}, out, sweep_table(rows))


@dataclass
class Report:
    """The HTML report written, and the analyses it found in RUN/analysis."""

    out: Path
    analyses: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "analyses": self.analyses}


def report(run: Path, out: Path | None = None) -> Report:
    """One self-contained HTML report of an `optimize` run (default: RUN/report.html): k*,
    FLOPs, plots and the analyses in RUN/analysis."""
    from draftvocab.analysis.report import build_report
    from draftvocab.core.atomic import atomic_write, check_output_file

    out = check_output_file(out or run / "report.html")
    atomic_write(out, build_report(run))
    sections = [n for n in ("coverage", "missing", "stability", "sweep")
                if (run / "analysis" / f"{n}.json").is_file()]
    return Report(out, sections)
