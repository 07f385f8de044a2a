"""The target: EAGLE-3 layer capture, KV-cache use, and the real SmolLM2 target loading offline."""

from __future__ import annotations

import types

import torch

from draftvocab.engine.target import eagle3_layers, load_target


def test_eagle3_layers_low_middle_high():
    assert eagle3_layers(30) == (1, 14, 26)  # SmolLM2-135M
    assert eagle3_layers(32) == (1, 15, 28)  # Llama-3.1-8B, as SpecForge
    assert eagle3_layers(4) == (1, 2, 3)


def test_hidden_states_enter_the_aux_layers(tiny_target):
    """Aux layer id i = the hidden state entering decoder layer i, as in SGLang and vLLM
    (`hidden_states + residual` before layer i) = HF's output_hidden_states[i]."""
    ids = torch.tensor([[5, 6, 7, 8]])
    out = tiny_target.forward(ids)
    ref = tiny_target.model(ids, output_hidden_states=True)
    parts = out.hidden.split(tiny_target.hidden_size, dim=-1)
    assert len(parts) == 3 and len(set(tiny_target.layers)) == 3
    for part, i in zip(parts, tiny_target.layers):
        torch.testing.assert_close(part, ref.hidden_states[i])
    torch.testing.assert_close(out.logits, ref.logits)
    assert out.hidden.shape == (1, 4, 3 * tiny_target.hidden_size)


def test_cached_forward_equals_full_forward(tiny_target):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    full = tiny_target.forward(ids)
    first = tiny_target.forward(ids[:, :3])
    rest = tiny_target.forward(ids[:, 3:], past=first.past_key_values)
    torch.testing.assert_close(rest.logits, full.logits[:, 3:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rest.hidden, full.hidden[:, 3:], rtol=1e-4, atol=1e-5)


def test_real_smollm2_target_loads_offline_and_answers():
    target = load_target("smollm2-135m")  # dequantised once, then from the cache
    assert (target.hidden_size, target.vocab_size, target.layers) == (576, 49152, (1, 14, 26))
    tok = target.tokenizer
    assert tok.encode("2024", add_special_tokens=False) == [
        tok.convert_tokens_to_ids(c) for c in "2024"]  # split digits, as llama.cpp
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                  add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = target.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert "4" in tok.decode(out[0, len(ids):])


def test_few_row_products_pick_a_measured_form_and_stay_exact(monkeypatch):
    """fp32 decode-sized products take W·xᵀ or x·Wᵀ, whichever this machine runs faster
    (timed once per shape and row count); either is the same product."""
    from draftvocab.engine import target as target_mod

    monkeypatch.setattr(target_mod, "_FORMS", {})
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 300)
    layer.forward = types.MethodType(target_mod._few_rows_linear, layer)
    for rows in (1, 2, 3, 5):
        x = torch.randn(1, rows, 64)
        with torch.no_grad():
            got = layer(x)
        want = torch.nn.functional.linear(x, layer.weight, layer.bias)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert set(target_mod._FORMS) == {(300, 64, r) for r in (1, 2, 3, 5)}
    # forced either way, the product is the same
    for faster in (True, False):
        monkeypatch.setattr(target_mod, "_FORMS", {(300, 64, 3): faster})
        with torch.no_grad():
            assert torch.allclose(layer(x[:, :3]), torch.nn.functional.linear(
                x[:, :3], layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # training keeps nn.Linear's own path, no timing
        monkeypatch.setattr(target_mod, "_FORMS", {})
        layer(x)
        assert target_mod._FORMS == {}
