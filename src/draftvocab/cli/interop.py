"""Interop commands: export, import, retrofit (SpecForge, SGLang, vLLM, speculators).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from draftvocab.cli.common import (
    ConfigOpt,
    JsonOpt,
    PresetOpt,
    _emit_json,
    _fail_cleanly,
    _run_summary,
    _setup,
    app,
    err,
)
from draftvocab.core.errors import DraftVocabError


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
    from draftvocab.core.atomic import check_output_dir, check_output_file
    from draftvocab.interop import formats

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
        from draftvocab.vocab.counts import TokenCounts

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
    from draftvocab.core.atomic import check_output_dir
    from draftvocab.interop.formats import import_draft

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

    from draftvocab.core.atomic import atomic_directory, check_output_dir
    from draftvocab.interop.retrofit import retrofit_draft
    from draftvocab.vocab.counts import TokenCounts
    from draftvocab.vocab.objective import utility_curve

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
    from draftvocab.engine.bench import load_questions, run_benchmark
    from draftvocab.engine.decode import SpeculativeDecoder
    from draftvocab.engine.draft import aux_layers, load_draft
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
