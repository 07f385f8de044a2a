"""Draft latency measured on the device at hand, and the end-to-end speed it predicts.

The paper scores a vocabulary by FLOPs. A real draft step also pays fixed costs (kernel
launches, memory traffic, attention over the cache) and its LM-head GEMM is tiled, so time is
neither proportional to FLOPs nor monotone in k. `measure_latency` times one draft forward —
fusion + decoder layer + LM head with k rows, at the drafting width — for a grid of k; a
piecewise-linear model interpolates every k, gives a measured R(k), flags where a larger k is
faster than a smaller one, and suggests rounding k to the fastest nearby multiple.

`predict_speed` turns coverage and latency into tokens/s without any α: a chain of γ drafted
tokens is accepted position by position with probability α_j · C(k) (the full-vocabulary
draft's conditional acceptance α_j, thinned by the chance the target's token is in the draft's
vocabulary at all), and a round costs one target verify plus γ draft forwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from draftvocab.core.errors import DraftVocabError


def default_grid(vocab: int, points: int = 24) -> list[int]:
    """Log-spaced k from 256 to V, rounded to multiples of 64 (and V itself)."""
    ks = np.geomspace(min(256, vocab), vocab, points)
    ks = np.unique(np.clip((ks // 64) * 64, 64, vocab).astype(int))
    return sorted({*ks.tolist(), vocab})


def measure_latency(target_config: dict, ks: Sequence[int], *, width: int = 1,
                    prefix: int = 256, repeats: int = 20, device: str = "cpu",
                    dtype=None, progress: Callable[[int], None] | None = None) -> dict:
    """Median seconds of one draft forward for each k (same random weights below the head)."""
    import torch

    from draftvocab.engine.drafters import DraftConfig, Eagle3Draft
    from draftvocab.vocab.mapping import mapping_from_ids

    dtype = dtype or torch.float32
    base = DraftConfig.from_target_config(target_config)
    vocab = base.vocab_size
    if not ks or min(ks) < 1 or max(ks) > vocab:
        raise DraftVocabError(f"k values must be in [1, V={vocab}]")
    torch.manual_seed(0)
    embed = torch.nn.Embedding(vocab, base.hidden_size)
    gen = torch.Generator().manual_seed(0)
    aux = torch.randn(1, width, 3 * base.target_hidden_size, generator=gen)
    ids = torch.randint(0, vocab, (1, width), generator=gen)
    kv = (1, base.num_key_value_heads, prefix, base.head_dim)
    past_k, past_v = torch.randn(kv, generator=gen), torch.randn(kv, generator=gen)
    positions = torch.arange(prefix, prefix + width)[None]
    mask = torch.ones(1, 1, width, prefix + width, dtype=torch.bool)
    mask[..., prefix:] = torch.ones(width, width, dtype=torch.bool).tril()
    aux, past_k, past_v = (x.to(device=device, dtype=dtype) for x in (aux, past_k, past_v))
    ids, positions, mask = (x.to(device) for x in (ids, positions, mask))
    seconds = {}
    for k in ks:
        m = mapping_from_ids(np.arange(k), vocab)
        draft = Eagle3Draft(DraftConfig.from_target_config(target_config, k), embed,
                            torch.from_numpy(m.d2t.copy()), torch.from_numpy(m.t2d.copy()))
        draft = draft.to(device=device, dtype=dtype).eval()
        seconds[int(k)] = _median_seconds(
            lambda d=draft: d.step(d.fuse(aux), ids, positions, past_k, past_v, mask),
            repeats, cuda=device != "cpu")
        if progress:
            progress(1)
    return {"device": str(device), "width": width, "prefix": prefix, "repeats": repeats,
            "vocab_size": vocab, "ks": [int(k) for k in ks],
            "seconds": [seconds[int(k)] for k in ks]}


def _median_seconds(fn, repeats: int, *, cuda: bool) -> float:
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):  # 3 warm-up calls
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return float(np.median(times))


@dataclass(frozen=True)
class LatencyModel:
    """Piecewise-linear T(k) through measured (k, seconds) points."""

    ks: np.ndarray
    seconds: np.ndarray
    vocab_size: int

    @classmethod
    def from_json(cls, data: dict) -> LatencyModel:
        order = np.argsort(data["ks"])
        return cls(np.asarray(data["ks"])[order], np.asarray(data["seconds"])[order],
                   int(data["vocab_size"]))

    def __call__(self, k) -> np.ndarray:
        """T(k): flat below the smallest measured k (the fixed costs dominate there; a noisy
        slope would extrapolate nonsense), linear beyond the largest."""
        k = np.asarray(k, dtype=float)
        slope_hi = (self.seconds[-1] - self.seconds[-2]) / max(self.ks[-1] - self.ks[-2], 1)
        t = np.interp(k, self.ks, self.seconds)  # constant below ks[0]
        t = np.where(k > self.ks[-1], self.seconds[-1] + slope_hi * (k - self.ks[-1]), t)
        return np.maximum(t, 1e-9)

    def reduction(self) -> np.ndarray:
        """Measured R(k) = 1 − T(k)/T(V) for k = 0..V (the FLOPs R's replacement)."""
        return 1.0 - self(np.arange(self.vocab_size + 1)) / float(self(self.vocab_size))

    def linear_fit(self) -> tuple[float, float]:
        """T ≈ fixed + per_row · k (least squares): what the FLOPs model assumes, for comparison."""
        per_row, fixed = np.polyfit(self.ks.astype(float), self.seconds, 1)
        return float(fixed), float(per_row)

    def anomalies(self, noise: float = 0.03) -> list[dict]:
        """Measured points faster (by more than `noise`) than a smaller measured k."""
        out = []
        for j in range(1, self.ks.size):
            i = int(np.argmax(self.seconds[:j]))
            if self.seconds[j] < self.seconds[i] * (1 - noise):
                out.append({"k": int(self.ks[j]), "seconds": float(self.seconds[j]),
                            "slower_smaller_k": int(self.ks[i]),
                            "its_seconds": float(self.seconds[i])})
        return out


def fastest_multiple(k: int, measure: Callable[[list[int]], list[float]], *,
                     multiples: Sequence[int] = (8, 16, 32, 64, 128, 256), up_to: float = 0.02,
                     vocab: int | None = None) -> dict:
    """Time k and its round-ups to each multiple within +`up_to` (rounding up never loses
    coverage); return the fastest."""
    limit = int(k * (1 + up_to))
    cands = sorted({k, *(((k + m - 1) // m) * m for m in multiples)})
    cands = [c for c in cands if c <= limit and (vocab is None or c <= vocab)]
    times = measure(cands)
    best = int(np.argmin(times))
    return {"k": k, "candidates": cands, "seconds": [float(t) for t in times],
            "fastest": cands[best], "saving": 1 - float(times[best]) / float(times[0])}


def acceptance_from_lengths(accept_lengths: Sequence[int], gamma: int) -> list[float]:
    """Per-position conditional acceptance α_j of a chain of γ from the tokens gained per target
    forward (accept length = accepted drafts + 1): α_j = P(≥ j accepted | ≥ j − 1 accepted)."""
    accepted = np.clip(np.asarray(accept_lengths) - 1, 0, gamma)
    if accepted.size == 0:
        raise DraftVocabError("no accept lengths to calibrate from")
    alphas = []
    for j in range(1, gamma + 1):
        reached = int((accepted >= j - 1).sum())
        alphas.append(float((accepted >= j).sum() / reached) if reached else 0.0)
    return alphas


def predict_speed(coverage: np.ndarray, t_draft: np.ndarray, t_verify: float,
                  alphas: Sequence[float], calibration_coverage: float = 1.0,
                  prefill_per_token: float = 0.0) -> dict:
    """Predicted tokens/s and accept length for every k: E[τ(k)] / (T_verify + γ·T_draft(k)),
    with per-position acceptance α_j · C(k) / C_cal (C_cal: the calibrating draft's coverage).
    `prefill_per_token` (the prompt's forward, shared by every k) turns decode speed into the
    end-to-end speed a benchmark measures. `coverage`, `t_draft`: arrays over the same k."""
    gamma = len(alphas)
    scale = np.clip(np.asarray(coverage, dtype=float) / calibration_coverage, 0.0, 1.0)
    tau = np.ones_like(scale)
    run = np.ones_like(scale)
    for a in alphas:
        run = run * a * scale
        tau = tau + run
    seconds = t_verify + gamma * np.asarray(t_draft, dtype=float)
    return {"tau": tau, "tokens_per_s": 1.0 / (seconds / tau + prefill_per_token)}
