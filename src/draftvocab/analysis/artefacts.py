"""A run directory: everything `optimize` produces, written atomically as one unit.

Owns the layout (summary.json, trials.json/.csv, counts.safetensors, the mapping files,
utility.png, pareto.png) and what goes into summary.json. The directory is built in a temp
sibling and swapped in whole, so a rerun never leaves a mix of old and new files.
The numbers are `vocab`'s, the figures `plots.py`'s, the atomic swap `core.atomic`'s.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from draftvocab.analysis.plots import plot_pareto, plot_utility
from draftvocab.core.atomic import atomic_directory
from draftvocab.core.version import __version__
from draftvocab.vocab.flops import DraftFlops
from draftvocab.vocab.mapping import build_mapping, write_mapping_files
from draftvocab.vocab.objective import Objective
from draftvocab.vocab.optimize import OptimizeResult
from draftvocab.vocab.token_counts import TokenCounts

SUMMARY = "summary.json"


def summary_dict(result: OptimizeResult, flops: DraftFlops, counts: TokenCounts,
                 inputs: dict[str, Any]) -> dict[str, Any]:
    """summary.json: k*, C, R, U, both solvers, the FLOPs table and input fingerprints."""
    k, vocab = result.chosen.k, result.vocab_size
    return {
        **result.to_json(),
        "vocab_reduction": 1.0 - k / vocab,
        "trials": result.n_trials,
        "flops": {**flops.to_json(), "draft_total_at_k": flops.total(k)},
        "inputs": {
            **inputs,
            "tokenizer": counts.metadata.get("tokenizer"),
            "chat_template": counts.metadata.get("chat_template"),
            "datasets": counts.metadata.get("datasets"),
            "conversations": counts.metadata.get("conversations"),
            "supervised_tokens": counts.total,
            "supervise": counts.metadata.get("supervise", "content"),
            "leading_assistant": counts.metadata.get("leading_assistant", "keep"),
            "template_kwargs": counts.metadata.get("template_kwargs"),
            "skipped": counts.metadata.get("skipped"),
            "left_out": counts.metadata.get("left_out"),
        },
        "draftvocab_version": __version__,
    }


def write_run(
    out_dir: str | os.PathLike,
    *,
    counts: TokenCounts,
    flops: DraftFlops,
    objective: Objective,
    result: OptimizeResult,
    inputs: dict[str, Any],
    decode: Callable[[list[int]], list[str]] | None = None,
    plots: bool = True,
    extra_files: dict[str, str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the whole run directory atomically; returns its path and the summary dict.
    `extra_files` (name -> text) go into the same directory, swapped in with it."""
    summary = summary_dict(result, flops, counts, inputs)
    mapping = build_mapping(counts.counts, result.chosen.k)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        counts.save(tmp / "counts.safetensors")
        write_mapping_files(tmp, mapping, counts=counts.counts, decode=decode)
        rows = result.trials_table()
        (tmp / "trials.json").write_text(json.dumps(rows, indent=1))
        buf = io.StringIO()
        fields = ["solver", "number", "k", "coverage", "reduction", "utility", "feasible"]
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "trials.csv").write_text(buf.getvalue())
        if plots:
            plot_utility(objective, result, tmp / "utility.png")
            plot_pareto(objective, result, tmp / "pareto.png")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        summary["files"] = sorted(p.name for p in tmp.iterdir()) + [SUMMARY]
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2))
    return out_dir, summary
