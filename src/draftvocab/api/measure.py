"""Measurements as library calls: `latency` times one draft forward over a grid of k (the
LM-head cost the FLOPs model predicts), `calibrate` measures a draft's per-position acceptance
and the target's verify time on Spec-Bench — the inputs of `optimize --objective speedup`.

Owns the checks, the grid, the fits added to the timings and the JSON/PNG outputs (written
atomically). The timing loops are `engine.latency`, decoding `engine.decode`; rendering is the
CLI's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from draftvocab.api.decoding import DEFAULT_TARGET
from draftvocab.api.inputs import Progress, numbers, quiet, setup
from draftvocab.core.errors import DraftVocabError


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DraftVocabError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DraftVocabError("--device cuda: no CUDA device is available here")


@dataclass
class LatencyResult:
    """latency.json's content (`data`: ks, seconds, the linear fit, tiling anomalies, ...),
    where it was written, and the FLOPs model's R(k) at each measured k."""

    data: dict[str, Any]
    out: Path
    flops_reduction: list[float]

    def to_json(self) -> dict[str, Any]:
        return self.data | {"out": str(self.out)}


def latency(*, preset: str | None = None, config: str | Path | None = None,
            ks: str | Sequence[int] | None = None, width: int = 1, prefix: int = 256,
            repeats: int = 20, device: str = "cpu", round_k: int | None = None,
            out: str | Path = "latency", progress: Progress | None = None) -> LatencyResult:
    """Time one draft forward (fusion + layer + LM head of k rows) for each k of `ks` (default:
    24 log-spaced values up to V), fit fixed + per-row costs, compare the measured R(k) with
    the FLOPs R(k) and flag GEMM-tiling anomalies; `round_k` also times its round-ups to
    multiples of 8…256. Writes `out/latency.json` and `out/latency.png`.

    >>> from draftvocab.api.measure import latency
    >>> r = latency(preset="smollm2-135m", ks=[1000, 8000], repeats=3, out="latency")
    >>> r.data["ks"]
    [1000, 8000]
    """
    import numpy as np

    from draftvocab.analysis.plots import plot_latency
    from draftvocab.core.atomic import atomic_directory, check_output_dir
    from draftvocab.engine.latency import (
        LatencyModel,
        default_grid,
        fastest_multiple,
        measure_latency,
    )
    from draftvocab.vocab.flops import flops_breakdown

    if width < 1 or repeats < 1 or prefix < 0:
        raise DraftVocabError("--width and --repeats must be >= 1, --prefix >= 0")
    _check_device(device)
    out = check_output_dir(Path(out))
    s = setup(preset, Path(config) if config else None, need_tokenizer=False)
    f = flops_breakdown(s.config_path)
    grid = numbers(ks, "--ks", int) if ks else default_grid(f.vocab_size)
    if not grid or min(grid) < 1 or max(grid) > f.vocab_size:
        raise DraftVocabError(f"--ks must be draft vocabulary sizes in [1, V={f.vocab_size:,}]")
    if round_k is not None and not 1 <= round_k <= f.vocab_size:
        raise DraftVocabError(f"--round must be in [1, V={f.vocab_size:,}], got {round_k}")
    progress = progress or quiet
    progress("timing draft forwards", 0, len(grid))
    result = measure_latency(s.config, grid, width=width, prefix=prefix, repeats=repeats,
                             device=device, progress=lambda n: progress("timing draft forwards",
                                                                        n))
    model = LatencyModel.from_json(result)
    fixed, per_row = model.linear_fit()
    result |= {"linear_fit": {"fixed_seconds": fixed, "seconds_per_row": per_row},
               "anomalies": model.anomalies(),
               "flops_fixed_share": f.fixed / f.total(), "measured_fixed_share":
               fixed / float(model(f.vocab_size))}
    if round_k is not None:
        result["rounding"] = fastest_multiple(
            round_k, lambda c: measure_latency(s.config, c, width=width, prefix=prefix,
                                               repeats=repeats, device=device)["seconds"],
            vocab=f.vocab_size)
    r_flops = np.asarray(f.latency_reduction(np.arange(f.vocab_size + 1)), dtype=float)
    with atomic_directory(out) as tmp:
        (tmp / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_latency(model.ks, model.seconds, model.reduction(), r_flops, tmp / "latency.png",
                     title=f"draft forward, width {width}, {device}")
    return LatencyResult(result, out, [float(r_flops[k]) for k in result["ks"]])


@dataclass
class Calibration:
    """What `optimize --objective speedup` reads (calibration.json): per-position acceptance
    α_j of a chain of `gamma`, mean accept length, the target's verify and prefill costs,
    plain decoding speed."""

    draft: str
    gamma: int
    alphas: list[float]
    accept_length: float
    t_verify_seconds: float
    draft_vocab_size: int
    vocab_size: int
    plain_tokens_per_s: float
    rounds: int
    prefill_seconds_per_token: float
    max_new_tokens: int
    out: Path | None = None  # where it was written

    def to_json(self) -> dict[str, Any]:
        """calibration.json's content (and `out`, once written)."""
        data = {k: v for k, v in self.__dict__.items() if k != "out"}
        return data if self.out is None else data | {"out": str(self.out)}


def calibrate(draft: str | Path, *, target: str | Path = DEFAULT_TARGET, gamma: int = 2,
              per_category: int = 2, max_new_tokens: int = 64,
              out: str | Path = "calibration.json",
              progress: Progress | None = None) -> Calibration:
    """Chain-decode the first `per_category` Spec-Bench questions of each category with an
    EAGLE-3 draft (preferably full-vocabulary) and plainly: per-position acceptance α_j, the
    target's verify time and prefill cost, written to `out` (JSON).

    >>> from draftvocab import TrainConfig, calibrate, train
    >>> _ = train(max_samples=8, config=TrainConfig(max_steps=2, max_len=128), out="draft")
    >>> c = calibrate("draft", per_category=1, max_new_tokens=16, out="calibration.json")
    >>> len(c.alphas) == c.gamma
    True
    """
    import numpy as np

    from draftvocab.core.atomic import atomic_write, check_output_file
    from draftvocab.engine.bench import load_questions
    from draftvocab.engine.decode import SpeculativeDecoder
    from draftvocab.engine.drafters import aux_layers, load_draft, read_config
    from draftvocab.engine.latency import acceptance_from_lengths
    from draftvocab.engine.target import load_target

    if gamma < 1 or per_category < 1 or max_new_tokens < 1:
        raise DraftVocabError("--gamma, --per-category and --max-new-tokens must be at least 1")
    out = Path(out)
    check_output_file(out)
    read_config(draft).check_servable("calibrate")  # SpecBlock drafts: no chain acceptance
    tgt = load_target(target, layers=aux_layers([draft]))
    d = load_draft(draft, tgt)
    dec = SpeculativeDecoder(tgt, d, tree=False, gamma=gamma)
    lengths, verify, forwards, plain_s, plain_tok, prefill = [], 0.0, 0, 0.0, 0, 0.0
    plain = SpeculativeDecoder(tgt)
    qs = load_questions(per_category=per_category, turns=1)
    progress = progress or quiet
    progress("calibrating", 0, len(qs))
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
        progress("calibrating", 1)
    if not lengths:
        raise DraftVocabError("no question fitted the target's context")
    c = d.config
    result = Calibration(
        draft=str(draft), gamma=gamma, alphas=acceptance_from_lengths(lengths, gamma),
        accept_length=float(np.mean(lengths)), t_verify_seconds=verify / forwards,
        draft_vocab_size=c.draft_vocab_size, vocab_size=c.vocab_size,
        plain_tokens_per_s=plain_tok / plain_s, rounds=len(lengths),
        prefill_seconds_per_token=prefill / plain_tok, max_new_tokens=max_new_tokens)
    atomic_write(out, json.dumps(result.to_json(), indent=2) + "\n")
    result.out = out
    return result
