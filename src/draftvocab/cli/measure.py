"""Measurement commands: latency (LM-head timing), calibrate (target and draft costs).
"""

from __future__ import annotations

import json
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
    _floats,
    _md_table,
    _measure,
    _setup,
    app,
    console,
    err,
)
from draftvocab.core.errors import DraftVocabError


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DraftVocabError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DraftVocabError("--device cuda: no CUDA device is available here")


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
    from draftvocab.analysis.plots import plot_latency
    from draftvocab.core.atomic import atomic_directory, check_output_dir
    from draftvocab.engine.latency import LatencyModel, default_grid, fastest_multiple
    from draftvocab.vocab.flops import flops_breakdown

    if width < 1 or repeats < 1 or prefix < 0:
        raise DraftVocabError("--width and --repeats must be >= 1, --prefix >= 0")
    _check_device(device)
    out = check_output_dir(out)
    s = _setup(preset, config, need_tokenizer=False)
    f = flops_breakdown(s.config_path)
    grid = _floats(ks, "--ks", int) if ks else default_grid(f.vocab_size)
    if not grid or min(grid) < 1 or max(grid) > f.vocab_size:
        raise DraftVocabError(f"--ks must be draft vocabulary sizes in [1, V={f.vocab_size:,}]")
    if round_k is not None and not 1 <= round_k <= f.vocab_size:
        raise DraftVocabError(f"--round must be in [1, V={f.vocab_size:,}], got {round_k}")
    result = _measure(s.config, grid, width, prefix, repeats, device, as_json)
    model = LatencyModel.from_json(result)
    fixed, per_row = model.linear_fit()
    result |= {"linear_fit": {"fixed_seconds": fixed, "seconds_per_row": per_row},
               "anomalies": model.anomalies(),
               "flops_fixed_share": f.fixed / f.total(), "measured_fixed_share":
               fixed / float(model(f.vocab_size))}
    if round_k is not None:
        result["rounding"] = fastest_multiple(
            round_k, lambda c: _measure(s.config, c, width, prefix, repeats, device,
                                        True)["seconds"], vocab=f.vocab_size)
    import numpy as np

    r_flops = np.asarray(f.latency_reduction(np.arange(f.vocab_size + 1)), dtype=float)
    with atomic_directory(out) as tmp:
        (tmp / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_latency(model.ks, model.seconds, model.reduction(), r_flops, tmp / "latency.png",
                     title=f"draft forward, width {width}, {device}")
    if as_json:
        _emit_json(result | {"out": str(out)})
        return
    rows = [[f"{k:,}", f"{1e3 * t:.3f}", f"{1 - t / result['seconds'][-1]:.3f}",
             f"{r_flops[k]:.3f}"] for k, t in zip(result["ks"], result["seconds"])]
    console.print(_md_table(["k", "ms", "R measured", "R FLOPs"], rows), markup=False,
                  highlight=False)
    err.print(f"fit: {1e3 * fixed:.3f} ms fixed + {1e6 * per_row:.3f} ms per 1,000 rows "
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
    import numpy as np

    from draftvocab.core.atomic import atomic_write, check_output_file
    from draftvocab.engine.bench import load_questions
    from draftvocab.engine.decode import SpeculativeDecoder
    from draftvocab.engine.draft import aux_layers, load_draft, read_config, require_eagle3
    from draftvocab.engine.latency import acceptance_from_lengths
    from draftvocab.engine.target import load_target

    if gamma < 1 or per_category < 1 or max_new_tokens < 1:
        raise DraftVocabError("--gamma, --per-category and --max-new-tokens must be at least 1")
    check_output_file(out)
    require_eagle3(read_config(draft), "calibrate")
    tgt = load_target(target, layers=aux_layers([draft]))
    d = load_draft(draft, tgt)
    dec = SpeculativeDecoder(tgt, d, tree=False, gamma=gamma)
    lengths, verify, forwards, plain_s, plain_tok, prefill = [], 0.0, 0, 0.0, 0, 0.0
    plain = SpeculativeDecoder(tgt)
    from rich.progress import Progress

    qs = load_questions(per_category=per_category, turns=1)
    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("calibrating", total=len(qs))
        for q in qs:
            ids = tgt.prompt_ids([{"role": "user", "content": q.turns[0]}])
            if len(ids) + max_new_tokens > tgt.max_length:
                continue
            res = dec.generate(ids, max_new_tokens)
            lengths += res.accept_lengths
            verify += res.target_seconds - res.prefill_seconds
            forwards += res.target_forwards
            p = plain.generate(ids, max_new_tokens)
            plain_s, plain_tok = plain_s + p.seconds, plain_tok + len(p.tokens)
            prefill += p.prefill_seconds
            bar.advance(task)
    c = d.config
    if not lengths:
        raise DraftVocabError("no question fitted the target's context")
    result = {"draft": str(draft), "gamma": gamma,
              "alphas": acceptance_from_lengths(lengths, gamma),
              "accept_length": float(np.mean(lengths)), "t_verify_seconds": verify / forwards,
              "draft_vocab_size": c.draft_vocab_size, "vocab_size": c.vocab_size,
              "plain_tokens_per_s": plain_tok / plain_s, "rounds": len(lengths),
              "prefill_seconds_per_token": prefill / plain_tok,
              "max_new_tokens": max_new_tokens}
    atomic_write(out, json.dumps(result, indent=2) + "\n")
    if as_json:
        _emit_json(result | {"out": str(out)})
        return
    alphas = ", ".join(f"{a:.3f}" for a in result["alphas"])
    err.print(f"α = {alphas}; τ {result['accept_length']:.3f}; "
              f"verify {1e3 * result['t_verify_seconds']:.1f} ms; plain "
              f"{result['plain_tokens_per_s']:.1f} tok/s -> {escape(str(out))}")
