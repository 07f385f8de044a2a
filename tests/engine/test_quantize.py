"""Weight-only int8 draft products: per-row int8 within half a step, the int8 product is the
product with the dequantised weight, and everything else (training, many rows, other dtypes)
keeps the full weights."""

from __future__ import annotations

import pytest
import torch

from draftvocab.engine import quantize
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.drafters import DraftConfig, Eagle3Draft, load_draft, save_draft
from draftvocab.engine.rowforms import few_rows_linear
from tests.conftest import make_tiny_target


def _layer(out_features=96, in_features=64, bias=False, dtype=torch.float32):
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=bias).to(dtype)
    return quantize.int8_linears(torch.nn.Sequential(layer))[0]


def test_per_row_int8_is_within_half_a_step_and_uses_the_range():
    torch.manual_seed(0)
    w = torch.randn(50, 33) * torch.logspace(-3, 2, 50)[:, None]  # rows of very different size
    w[7] = 0  # a zero row: zeros, no NaN
    q, scales = quantize.quantize(w)
    assert q.dtype == torch.int8 and scales.shape == (50,)
    err = (q.float() * scales[:, None] - w).abs()
    assert bool((err <= scales[:, None] / 2 + 1e-12).all())
    nonzero = torch.arange(50) != 7
    assert bool((q[nonzero].abs().amax(1) == 127).all())
    assert bool((q[7] == 0).all()) and torch.isfinite(scales).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_inference_products_are_the_dequantised_weights(dtype, bias):
    layer = _layer(bias=bias, dtype=dtype)
    q, scales = quantize.quantize(layer.weight)
    x = torch.randn(1, 3, 64).to(dtype)
    with torch.no_grad():
        got = layer(x)
    want = torch.nn.functional.linear(x.float(), q.float() * scales.to(dtype).float()[:, None],
                                      None if layer.bias is None else layer.bias.float())
    assert got.shape == (1, 3, 96) and got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(got.float(), want, rtol=tol, atol=tol)
    full = torch.nn.functional.linear(x.float(), layer.weight.float(),
                                      None if layer.bias is None else layer.bias.float())
    assert not torch.equal(got.float(), full)  # it did not use the full weights


def test_training_many_rows_and_other_dtypes_keep_the_full_weights():
    layer = _layer()
    x = torch.randn(1, 2, 64, requires_grad=True)
    y = layer(x)  # gradients on: the full weights, differentiable
    assert torch.equal(y, torch.nn.functional.linear(x, layer.weight))
    y.sum().backward()
    assert layer.weight.grad is not None
    with torch.no_grad():
        many = torch.randn(1, quantize.MAX_ROWS + 1, 64)
        assert torch.equal(layer(many), few_rows_linear(layer, many))
        wide = torch.randn(1, 2, 64, dtype=torch.float64)
        assert torch.equal(layer.double()(wide), torch.nn.functional.linear(wide, layer.weight))


def test_a_changed_weight_is_quantised_again():
    layer = _layer()
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2)  # an optimizer step bumps the version
        after = layer(x)
    assert torch.allclose(after, 2 * before, rtol=1e-4, atol=1e-4)


def test_load_draft_decodes_in_int8_unless_told_not_to(tmp_path, monkeypatch):
    target = make_tiny_target(dtype=torch.bfloat16)
    torch.manual_seed(1)
    draft = Eagle3Draft(DraftConfig.for_target(target), target.model.get_input_embeddings())
    save_draft(draft, tmp_path / "draft")

    def forwards(d):
        return {m.forward.__func__ for m in d.modules() if type(m) is torch.nn.Linear}

    assert forwards(load_draft(tmp_path / "draft", target)) == {quantize.int8_linear}
    assert forwards(load_draft(tmp_path / "draft", target, int8=False)) == {few_rows_linear}
    monkeypatch.setenv("DRAFTVOCAB_DRAFT_INT8", "0")
    assert forwards(load_draft(tmp_path / "draft", target)) == {few_rows_linear}
    assert forwards(load_draft(tmp_path / "draft", target, int8=True)) == {quantize.int8_linear}


def test_an_int8_draft_keeps_greedy_output_the_targets():
    target = make_tiny_target(dtype=torch.bfloat16, vocab_size=8, eos_token_id=None,
                              bos_token_id=None, initializer_range=0.5)
    torch.manual_seed(1)
    draft = Eagle3Draft(DraftConfig.for_target(target), target.model.get_input_embeddings())
    draft = quantize.int8_linears(draft.to(torch.bfloat16))
    plain, spec = SpeculativeDecoder(target), SpeculativeDecoder(target, draft, tree=False,
                                                                 gamma=2)
    accepted = 0
    for seed in range(6):
        prompt = torch.randint(0, 8, (3 + seed,), generator=torch.Generator().manual_seed(seed))
        expected = plain.generate(prompt.tolist(), 30, stop_at_eos=False).tokens
        got = spec.generate(prompt.tolist(), 30, stop_at_eos=False)
        assert got.tokens == expected
        accepted += sum(a > 1 for a in got.accept_lengths)
    assert "_draftvocab_int8" in draft.lm_head.__dict__  # the int8 products ran
    assert accepted >= 1
