"""Every few-row product form is x·Wᵀ exactly; which one runs is set per forward."""

from __future__ import annotations

import types

import torch

from draftvocab.engine.rowforms import FORMS, candidate_forms, few_rows_linear, use_form


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
