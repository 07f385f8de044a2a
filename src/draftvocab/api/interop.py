"""The interop commands as library calls: export, import_, retrofit.

Each checks its arguments before any work, resolves what a run directory implies (its counts,
k*, preset) and calls `interop.formats` / `interop.retrofit`, writing atomically. Results are
the JSON summaries `draftvocab CMD --json` prints. Nothing here prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from draftvocab.api.inputs import run_summary, setup
from draftvocab.core.errors import DraftVocabError


def export(source: Path, to: str, out: Path, *, preset: str | None = None,
           config: Path | None = None, k: int | None = None,
           verifier: str | None = None) -> dict[str, Any]:
    """Write a draft or vocabulary in SpecForge, SGLang, speculators (vLLM) or FR-Spec format;
    the summary names draft_vocab_size, vocab_size and out."""
    from draftvocab.core.atomic import check_output_dir, check_output_file
    from draftvocab.interop import formats

    if to not in formats.FORMATS:
        raise DraftVocabError(f"--to must be one of {', '.join(formats.FORMATS)}; got {to!r}")
    if not source.exists():
        raise DraftVocabError(f"not found: {source}")
    (check_output_file if to == "frspec" else check_output_dir)(out)
    run = run_summary(source)
    if to == "sglang":
        return formats.export_sglang(source, out)
    if to == "speculators":
        return formats.export_speculators(source, out, verifier=verifier)
    if to == "specforge":
        target_config = None
        if not (source / "model.safetensors").is_file():
            inputs = run.get("inputs") or {}
            if preset is None and config is None and inputs.get("preset"):
                preset = inputs["preset"]
            target_config = setup(preset, config, need_tokenizer=False).config
        return formats.export_specforge(source, out, target_config=target_config)
    from draftvocab.vocab.counts import TokenCounts

    counts_file = source / "counts.safetensors" if source.is_dir() else source
    k = k or run.get("k")
    if k is None:
        raise DraftVocabError("frspec needs --k (or an `optimize` run directory)")
    return formats.export_frspec(TokenCounts.load(counts_file).counts, int(k), out)


def import_(source: Path, out: Path, *, mapping: Path | None = None,
            target_layers: str | tuple[int, ...] | None = None) -> dict[str, Any]:
    """Read a SpecForge / speculators EAGLE-3 draft into this engine's format in `out`."""
    from draftvocab.core.atomic import check_output_dir
    from draftvocab.interop.formats import import_draft

    check_output_dir(out)
    layers = None
    if isinstance(target_layers, str) and target_layers:
        try:
            layers = tuple(int(x) for x in target_layers.split(","))
        except ValueError:
            raise DraftVocabError(f"--target-layers takes integers like 1,14,26; got "
                                  f"{target_layers!r}") from None
    elif target_layers:
        layers = tuple(target_layers)
    return import_draft(source, out, mapping=mapping, target_layers=layers)


@dataclass
class Retrofit:
    """A trimmed draft: the retrofit result and the summary (with before/after bench rows)."""

    result: Any  # interop.retrofit.RetrofitResult, with out = the final directory
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.summary


def retrofit(draft: Path, counts: Path, out: Path, *, k: int | None = None,
             alpha: float = 0.5, c_min: float = 0.9, bench: bool = True,
             target: str = "smollm2-135m", per_category: int = 2, max_new_tokens: int = 64,
             runs: int = 1) -> Retrofit:
    """Trim an existing draft's vocabulary to the domain of `counts` without training, and
    (bench) measure τ and tok/s before and after on Spec-Bench."""
    from draftvocab.core.atomic import atomic_directory, check_output_dir
    from draftvocab.interop.retrofit import retrofit_draft
    from draftvocab.vocab.counts import TokenCounts
    from draftvocab.vocab.objective import check_weights

    if per_category < 1 or runs < 1 or max_new_tokens < 1:
        raise DraftVocabError("--per-category, --runs and --max-new-tokens must be at least 1")
    check_weights(alpha, c_min)
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
    return Retrofit(dataclasses.replace(res, out=str(out)), summary)


def _bench_retrofit(draft: Path, trimmed: Path, target: str, per_category: int,
                    max_new_tokens: int, runs: int) -> dict:
    from draftvocab.engine.bench import load_questions, run_benchmark
    from draftvocab.engine.decode import SpeculativeDecoder
    from draftvocab.engine.drafters import aux_layers, load_draft
    from draftvocab.engine.target import load_target

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
