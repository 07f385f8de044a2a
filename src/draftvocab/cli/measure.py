"""Measurement commands: latency (LM-head timing), calibrate (target and draft costs) — each
parses its options, makes one `draftvocab.api.measure` call and renders the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from draftvocab.analysis.tables import md_table
from draftvocab.cli.common import (
    ConfigOpt,
    JsonOpt,
    PresetOpt,
    _Bars,
    _emit_json,
    _fail_cleanly,
    app,
    console,
    err,
)


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
    from draftvocab.api.measure import latency

    with _Bars(as_json) as progress:
        r = latency(preset=preset, config=config, ks=ks, width=width, prefix=prefix,
                    repeats=repeats, device=device, round_k=round_k, out=out, progress=progress)
    if as_json:
        _emit_json(r.to_json())
        return
    result, out = r.data, r.out
    rows = [[f"{k:,}", f"{1e3 * t:.3f}", f"{1 - t / result['seconds'][-1]:.3f}", f"{rf:.3f}"]
            for k, t, rf in zip(result["ks"], result["seconds"], r.flops_reduction)]
    console.print(md_table(["k", "ms", "R measured", "R FLOPs"], rows), markup=False,
                  highlight=False)
    fit = result["linear_fit"]
    err.print(f"fit: {1e3 * fit['fixed_seconds']:.3f} ms fixed + "
              f"{1e6 * fit['seconds_per_row']:.3f} ms per 1,000 rows "
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
    from draftvocab.api.measure import calibrate

    with _Bars(as_json) as progress:
        c = calibrate(draft, target=target, gamma=gamma, per_category=per_category,
                      max_new_tokens=max_new_tokens, out=out, progress=progress)
    if as_json:
        _emit_json(c.to_json())
        return
    alphas = ", ".join(f"{a:.3f}" for a in c.alphas)
    err.print(f"α = {alphas}; τ {c.accept_length:.3f}; verify {1e3 * c.t_verify_seconds:.1f} ms; "
              f"plain {c.plain_tokens_per_s:.1f} tok/s -> {escape(str(out))}")
