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
"""

from __future__ import annotations

import contextlib
import threading

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


def few_rows_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`nn.Linear.forward`, with a CPU inference call on a few rows computed in the form
    `use_form` set. Training, large batches and other devices keep the usual path."""
    rows = x.numel() // max(x.shape[-1], 1)
    if x.device.type == "cpu" and x.dtype != torch.float32 and x.dim() >= 2 and rows == 1:
        # bf16/fp16: oneDNN's one-row kernel splits the reduction across threads, so a row's
        # result differs from the same row in a multi-row call (down_proj here); computing
        # one row as two makes every row bit-identical whatever the row count (and costs
        # nothing: a 2-row bf16 product is as fast as a 1-row one on this CPU).
        two = torch.nn.functional.linear(torch.cat([x, x], dim=-2), self.weight, self.bias)
        return two.narrow(-2, 0, 1)
    form = getattr(_active, "form", None)  # set only for fp32 CPU forwards of <= 16 rows
    if (form is None or torch.is_grad_enabled() or x.dim() < 2
            or form not in candidate_forms(rows)):
        return torch.nn.functional.linear(x, self.weight, self.bias)
    return FORMS[form](self.weight, self.bias, x, rows)
