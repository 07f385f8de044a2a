"""The target: EAGLE-3 layer capture, KV-cache use, and the real SmolLM2 target loading offline."""

from __future__ import annotations

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


def test_a_prefill_may_keep_only_the_last_logits(tiny_target):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    full = tiny_target.forward(ids)
    last = tiny_target.forward(ids, last_logits=True)
    assert last.logits.shape == (1, 1, tiny_target.vocab_size)
    torch.testing.assert_close(last.logits[:, 0], full.logits[:, -1])
    assert torch.equal(last.hidden, full.hidden)  # every position's features: the draft's
    step = tiny_target.forward(torch.tensor([[11]]), past=last.past_key_values)
    ref = tiny_target.forward(torch.tensor([[11]]), past=full.past_key_values)
    torch.testing.assert_close(step.logits, ref.logits)


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


def test_few_row_forwards_take_a_measured_form_and_stay_exact(tiny_target):
    """An fp32 CPU forward of a few rows runs its products in the form whole forwards timed
    fastest for that row count (once per row count); every form gives the same logits."""
    from draftvocab.engine.rowforms import candidate_forms

    ids = torch.tensor([[5, 9, 13, 2, 7, 11]])
    cache = tiny_target.forward(ids[:, :4]).past_key_values
    assert 4 in tiny_target._forms  # the prefill's row count was timed too
    step = ids[:, 4:]
    got = tiny_target.forward(step, past=cache)
    assert tiny_target._forms[2] in candidate_forms(2)
    chosen = dict(tiny_target._forms)
    cache.crop(-2)
    tiny_target.forward(step, past=cache)
    assert tiny_target._forms == chosen  # measured once
    for rows in (1, 2):
        for form in candidate_forms(rows):
            tiny_target._forms[rows] = form
            cache.crop(-2)
            out = tiny_target.forward(step[:, :rows], past=cache)
            cache.crop(-rows)
            tiny_target._forms[rows] = None  # nn.Linear's own path
            want = tiny_target.forward(step[:, :rows], past=cache)
            assert torch.allclose(out.logits, want.logits, atol=1e-5, rtol=1e-5), form
            assert torch.allclose(out.logits, got.logits[:, :rows], atol=1e-4, rtol=1e-4)
            cache.crop(-rows)
            tiny_target.forward(step, past=cache)  # back to 6 tokens
    assert tiny_target._form(17) is None  # large batches keep nn.Linear's own path
    tiny_target._forms.update(chosen)


def test_choosing_forms_times_every_form_even_with_grad_enabled(tiny_target, monkeypatch):
    """`bench` chooses before any request, outside no_grad: the timing must still run each
    form (with grad on, every Linear would take nn.Linear's path and the choice be noise)."""
    from collections import Counter

    from draftvocab.engine import rowforms

    calls = Counter()
    for name, fn in list(rowforms.FORMS.items()):
        monkeypatch.setitem(rowforms.FORMS, name,
                            lambda *a, name=name, fn=fn: calls.update([name]) or fn(*a))
    saved = dict(tiny_target._forms)
    tiny_target._forms.clear()
    try:
        with torch.enable_grad():
            chosen = tiny_target.choose_forms(2)
    finally:
        tiny_target._forms.clear()
        tiny_target._forms.update(saved)
    assert set(chosen) == {1, 2}
    assert {"x·Wᵀ", "W·xᵀ", "paired"} <= set(calls)
