"""Interop commands: export, import, retrofit (SpecForge, SGLang, vLLM, speculators).

Each parses its options, makes one call into `draftvocab.api.interop` and prints its
summary (one line on stderr, or the JSON with --json).
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
    app,
    err,
)


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
    from draftvocab.api.interop import export

    summary = export(source, to, out, preset=preset, config=config, k=k, verifier=verifier)
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
    from draftvocab.api.interop import import_

    summary = import_(source, out, mapping=mapping, target_layers=target_layers)
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
    from draftvocab.api.interop import retrofit

    run = retrofit(draft, counts, out, k=k, alpha=alpha, c_min=c_min, bench=bench, target=target,
                   per_category=per_category, max_new_tokens=max_new_tokens, runs=runs)
    res, summary = run.result, run.summary
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
