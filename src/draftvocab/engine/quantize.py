"""Weight-only int8 Linear layers for a draft that decodes on CPU.

Why: between two target forwards a draft's weights leave the caches (the target streams ~260 MB
through them), so each draft forward reads its weights from memory again: SmolLM2's EAGLE-3
draft at k = 6,862 holds 17.2 MiB of bf16 Linear weights, and a round's catch-up forward took
2.23 ms, 0.06 of a plain step. int8 weights with one scale per output row halve those bytes
(`torch.ops.aten._weight_int8pack_mm`, the CPU kernel for weight-only int8): 1.66 ms. A draft
need not compute exactly — verification keeps the output the target's own — and it predicted
as well: on the target's answers to 186 Spec-Bench questions acc@0 0.313 with every product in
int8, as in fp32 (`benchmarks/bench_draft_int8.py`).

Only inference on CPU in fp32/bf16 takes this path; training, gradients, other devices and
dtypes keep `rowforms.few_rows_linear`. The int8 copy is made on first use and again whenever
the weight changes (keyed on its storage and version, as rowforms' packed copy is).
`DRAFTVOCAB_DRAFT_INT8=0` in the environment keeps drafts in their own dtype.
"""

from __future__ import annotations

import os

import torch

from draftvocab.engine.rowforms import few_rows_linear, patch_linears, weight_copy

DTYPES = (torch.float32, torch.bfloat16)
# More rows than this (a draft's catch-up over a whole prompt) are compute-bound: the int8
# kernel took 87 ms where bf16 took 74 for three prompts' catch-ups, so they keep rowforms'.
MAX_ROWS = 16


def enabled() -> bool:
    """Drafts decode with int8 weights unless `DRAFTVOCAB_DRAFT_INT8=0`."""
    return os.environ.get("DRAFTVOCAB_DRAFT_INT8", "1") != "0"


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (int8 [N, K], fp32 scales [N]) with weight ≈ q * scale."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def _int8_weight(layer: torch.nn.Linear, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    def make(w):
        q, scales = quantize(w)
        return q, scales.to(dtype)

    return weight_copy(layer, "_draftvocab_int8", make, dtype)


def int8_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`nn.Linear.forward` with int8 weights for CPU inference in fp32/bf16 on up to
    `MAX_ROWS` rows (`few_rows_linear` otherwise)."""
    if (x.device.type != "cpu" or x.dtype not in DTYPES or torch.is_grad_enabled()
            or self.weight.device.type != "cpu" or x.numel() > MAX_ROWS * x.shape[-1]):
        return few_rows_linear(self, x)
    q, scales = _int8_weight(self, x.dtype)
    y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).contiguous(), q, scales)
    if self.bias is not None:
        y = y + self.bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], q.shape[0])


def int8_linears(model: torch.nn.Module) -> torch.nn.Module:
    """Every plain `nn.Linear` of `model` computes with int8 weights in CPU inference."""
    return patch_linears(model, int8_linear)
