"""Every few-row product form is x·Wᵀ exactly; which one runs is set per forward."""

from __future__ import annotations

import types

import torch

from draftvocab.engine.rowforms import (
    FORMS,
    candidate_forms,
    few_rows_linear,
    packing,
    patch_linears,
    use_form,
)


def test_every_form_is_the_same_product():
    torch.manual_seed(0)
    weight, bias = torch.randn(300, 64), torch.randn(300)
    for rows in (1, 3):
        x = torch.randn(1, rows, 64)
        want = torch.nn.functional.linear(x, weight, bias)
        for form in candidate_forms(rows):
            got = FORMS[form](weight, bias, x, rows)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), form
    assert "paired" in candidate_forms(1) and "paired" not in candidate_forms(2)


def test_linear_follows_the_form_in_use_and_training_keeps_its_own(monkeypatch):
    calls = []
    for name in FORMS:
        monkeypatch.setitem(FORMS, name, lambda w, b, x, rows, name=name: calls.append(name)
                            or torch.nn.functional.linear(x, w, b))
    layer = torch.nn.Linear(8, 4)
    layer.forward = types.MethodType(few_rows_linear, layer)
    x = torch.randn(1, 1, 8)
    with torch.no_grad():
        layer(x)  # no form set: nn.Linear's own path
        with use_form("paired"):
            layer(x)
            layer(torch.randn(1, 3, 8))  # "paired" is for one row only: own path
            with use_form("W·xᵀ"):
                layer(x)
            layer(x)  # the outer form is back
    with use_form("W·xᵀ"), torch.enable_grad():
        layer(x)  # training: own path
    assert calls == ["paired", "W·xᵀ", "paired"]


def _bf16_layer(out_features: int = 1536, in_features: int = 576) -> torch.nn.Linear:
    torch.manual_seed(1)
    layer = torch.nn.Linear(in_features, out_features, bias=True).to(torch.bfloat16)
    return patch_linears(torch.nn.Sequential(layer))[0]


def _packs() -> bool:
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@torch.no_grad()
def test_bf16_inference_runs_packed_with_the_same_numbers():
    """Prepacked where oneDNN supports bf16 (the usual path elsewhere), and the same logits
    bit for bit either way, for one row (computed as two) and several."""
    layer = _bf16_layer()
    with packing(False):
        layer(torch.randn(1, 2, 576, dtype=torch.bfloat16))
    assert "_draftvocab_packed" not in layer.__dict__
    for rows in (1, 3, 8, 40):
        x = torch.randn(1, rows, 576, dtype=torch.bfloat16)
        with packing(False):
            plain = layer(x)
        with packing(True):
            packed = layer(x)
        assert ("_draftvocab_packed" in layer.__dict__) == _packs()
        assert torch.equal(packed, plain), rows
        assert torch.equal(plain, torch.nn.functional.linear(
            torch.cat([x, x], dim=-2) if rows == 1 else x, layer.weight, layer.bias)[:, :rows])


@torch.no_grad()
def test_bf16_rows_equal_one_row_calls_whatever_the_row_count():
    """What lossless greedy verification needs of every product: row r of a k-row call is the
    one-row call's result, bit for bit (down_proj's shape is where one row alone differs)."""
    for shape in ((576, 1536), (1536, 576), (6144, 576)):
        layer = _bf16_layer(*shape)
        x = torch.randn(1, 48, shape[1], dtype=torch.bfloat16) * 3
        with packing(True):
            alone = torch.cat([layer(x[:, r:r + 1]) for r in range(48)], dim=1)
            for k in range(2, 17):  # every row, in calls of k rows
                for s in range(0, 48 - k + 1, k):
                    assert torch.equal(layer(x[:, s:s + k]), alone[:, s:s + k]), (shape, k, s)


def test_a_changed_weight_is_repacked_and_training_never_packs():
    layer = _bf16_layer(64, 32)
    x = torch.randn(1, 3, 32, dtype=torch.bfloat16)
    with torch.no_grad(), packing(True):
        layer(x)
        layer.weight.add_(1.0)  # an optimizer step: the version counter moves
        after = layer(x)
        assert torch.equal(after, torch.nn.functional.linear(x, layer.weight, layer.bias))
        layer.load_state_dict({"weight": torch.zeros(64, 32), "bias": torch.zeros(64)})
        assert not layer(x).any()
    fresh = _bf16_layer(64, 32)
    with packing(True):
        y = fresh(x)  # grad enabled: nn.Linear's own path, differentiable
    assert y.requires_grad and "_draftvocab_packed" not in fresh.__dict__
