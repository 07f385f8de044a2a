"""Few-row products on CPU: the same x·Wᵀ, computed by whichever kernel is fastest here.

A decode step multiplies one row, a verify a few, by every weight of the target. MKL picks
its kernel by shape, and for few rows its choice can cost 2×: on an Intel Xeon with AMX a
3-row x·Wᵀ took twice W·xᵀ (a 3-row verify cost 2.04× a plain step; 1.13× as W·xᵀ); on an
AMD EPYC a single row is slow either way (the 49,152-row LM head: 12 ms for one row, 5.2 ms
for two rows as W·xᵀ), so one row may be computed as two. The target times whole forwards
per row count (`Target._form`) and runs each forward under its choice (`use_form`); on the
EPYC (`benchmarks/bench_rowforms.py`) a plain step took 39–55 ms instead of nn.Linear's
70–81, 2 rows 65 instead of 111–132, 4 rows 63–75 instead of 104–122. Every form is an
exact product of the same numbers; only speed differs. bf16 rows are always computed as two
(there for exactness, see stepwise.py).

bf16 inference products run on oneDNN's prepacked weights (`torch.ops.mkldnn`, the kernel a
bf16 `F.linear` reaches too, but with the weight in its plain layout on every call): a plain
SmolLM2-135M step went from 47.0 to 39.3 ms and a 3-row verify from 45.1 to 38.0 ms on a Xeon
with avx512_bf16, with logits bit-identical to `F.linear`'s (`benchmarks/bench_verify.py`).
The packed copy is made on first use and again whenever the weight changes (a draft evaluated
while it trains); it costs one more copy of each Linear's weights in memory —
`DRAFTVOCAB_PACK=0` turns it off.
"""

from __future__ import annotations

import contextlib
import os
import threading
import types

import torch


def _linear(weight, bias, x, rows):
    return torch.nn.functional.linear(x, weight, bias)


def _transposed(weight, bias, x, rows):
    y = torch.matmul(weight, x.reshape(rows, x.shape[-1]).t()).t()
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _paired(weight, bias, x, rows):
    """One row computed as two by W·xᵀ, the first kept."""
    return _transposed(weight, bias, torch.cat([x, x], dim=-2), 2).narrow(-2, 0, 1)


FORMS = {"x·Wᵀ": _linear, "W·xᵀ": _transposed, "paired": _paired}
_active = threading.local()  # the form of the forward in flight on this thread


def candidate_forms(rows: int) -> tuple[str, ...]:
    return tuple(FORMS) if rows == 1 else ("x·Wᵀ", "W·xᵀ")


@contextlib.contextmanager
def use_form(form: str | None):
    """Few-row fp32 products inside the block use `form` (None: nn.Linear's own)."""
    previous = getattr(_active, "form", None)
    _active.form = form
    try:
        yield
    finally:
        _active.form = previous


_packing = {"enabled": os.environ.get("DRAFTVOCAB_PACK", "1") != "0", "supported": None}


@contextlib.contextmanager
def packing(enabled: bool):
    """bf16 products inside the block use prepacked weights or not (benchmarks compare both)."""
    previous = _packing["enabled"]
    _packing["enabled"] = enabled
    try:
        yield
    finally:
        _packing["enabled"] = previous


def _packed_weight(layer: torch.nn.Linear) -> torch.Tensor | None:
    """oneDNN's prepacked copy of a bf16 CPU weight, or None where it cannot be had; a changed
    weight is repacked, never stale (`weight_copy`)."""
    if not _packing["enabled"]:
        return None
    if _packing["supported"] is None:
        _packing["supported"] = bool(torch.backends.mkldnn.is_available()
                                     and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not _packing["supported"]:
        return None
    return weight_copy(layer, "_draftvocab_packed",
                       lambda w: torch.ops.mkldnn._reorder_linear_weight(w.detach()))


def weight_copy(layer: torch.nn.Linear, name: str, make, *key):
    """`make(layer.weight)`, kept on the layer under `name` and made again whenever the weight
    changes: keyed on the parameter, its storage and its version counter (an optimizer step or
    `load_state_dict` bumps the version, `.to()` moves the storage), plus `key`."""
    w = layer.weight
    full_key = (id(w), w.data_ptr(), w._version, *key)
    cached = layer.__dict__.get(name)
    if cached is None or cached[0] != full_key:
        cached = (full_key, make(w))
        layer.__dict__[name] = cached
    return cached[1]


def _low_precision(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A bf16/fp16 CPU product: prepacked when it can be (bf16 inference), one row as two."""
    packed = (_packed_weight(layer) if x.dtype == torch.bfloat16
              and layer.weight.dtype == torch.bfloat16 and not torch.is_grad_enabled()
              else None)
    rows = x.numel() // max(x.shape[-1], 1)
    if rows == 1:
        # oneDNN's one-row kernel splits the reduction across threads, so a row's result
        # differs from the same row in a multi-row call (down_proj here); computing one row as
        # two makes every row bit-identical whatever the row count (and costs nothing: a 2-row
        # bf16 product is as fast as a 1-row one on this CPU). Packed or not, the same holds.
        x = torch.cat([x, x], dim=-2)
    if packed is None:
        y = torch.nn.functional.linear(x, layer.weight, layer.bias)
    else:
        y = torch.ops.mkldnn._linear_pointwise(x, packed, layer.bias, "none", [], "")
    return y.narrow(-2, 0, 1) if rows == 1 else y


def few_rows_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`nn.Linear.forward`, with a CPU inference call on a few rows computed in the form
    `use_form` set, and bf16/fp16 CPU calls exact whatever their row count (prepacked in bf16
    inference). Training, large batches and other devices keep the usual path."""
    if x.device.type == "cpu" and x.dtype != torch.float32 and x.dim() >= 2:
        return _low_precision(self, x)
    rows = x.numel() // max(x.shape[-1], 1)
    form = getattr(_active, "form", None)  # set only for fp32 CPU forwards of <= 16 rows
    if (form is None or torch.is_grad_enabled() or x.dim() < 2
            or form not in candidate_forms(rows)):
        return torch.nn.functional.linear(x, self.weight, self.bias)
    return FORMS[form](self.weight, self.bias, x, rows)


def patch_linears(model: torch.nn.Module, forward=few_rows_linear) -> torch.nn.Module:
    """Every plain `nn.Linear` of `model` computes with `forward` (default `few_rows_linear`:
    inference on CPU; anything else is `nn.Linear`'s own path)."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = types.MethodType(forward, module)
    return model
