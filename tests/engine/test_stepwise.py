"""bf16 verify rows equal one-token steps bit for bit (`stepwise.py`, the one-row Linear in
`target._few_rows_linear`): what keeps greedy speculative decoding identical to plain decoding
in bf16 on the real target, where transformers' masked multi-row attention and oneDNN's one-row
kernel each change the logits."""

from __future__ import annotations

import pytest
import torch

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.target import load_target, parse_dtype
from draftvocab.engine.verify import DraftNode, verify


@pytest.fixture(scope="module")
def smol_bf16():
    return load_target("smollm2-135m", dtype=torch.bfloat16)


def _steps(target, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """Logits after each of `tokens`, fed one at a time (plain decoding)."""
    out = target.forward(torch.tensor([prompt]))
    cache, rows = out.past_key_values, []
    for t in tokens:
        rows.append(target.forward(torch.tensor([[t]]), past=cache).logits[0, -1])
    return rows


def test_chain_verify_rows_equal_one_token_steps(smol_bf16):
    t = smol_bf16
    prompt = t.prompt_ids([{"role": "user", "content": "Summarize: the cat sat on the mat."}])
    text = t.tokenizer.encode(" The cat sat on the mat, and then it slept in the sun all day.",
                              add_special_tokens=False)[:12]
    ref = _steps(t, prompt, text)
    cache = t.forward(torch.tensor([prompt])).past_key_values
    n, at = len(prompt), 0
    for chunk in (3, 1, 8):  # verify forwards of 3, 1 (no draft) and 8 rows
        nodes = [DraftNode(tok, j - 1, j + 1) for j, tok in enumerate(text[at + 1:at + chunk])]
        _, _, out = verify(t, nodes, text[at], n + at, cache)  # the cache keeps all rows
        for r in range(chunk):
            assert torch.equal(out.logits[0, r], ref[at + r]), (chunk, r)
        at += chunk


def test_tree_verify_rows_equal_their_paths_steps(smol_bf16):
    """Two branches under the root: each node's row equals the one-token step at the end of
    its own path (keys gathered in cache order, siblings unseen)."""
    t = smol_bf16
    prompt = t.prompt_ids([{"role": "user", "content": "Name a colour."}])
    a = t.tokenizer.encode(" Blue is calm", add_special_tokens=False)
    b = t.tokenizer.encode(" Red is warm", add_special_tokens=False)
    root = 504
    nodes = [DraftNode(a[0], -1, 1), DraftNode(b[0], -1, 1)]
    nodes += [DraftNode(a[1], 0, 2), DraftNode(b[1], 1, 2), DraftNode(a[2], 2, 3)]
    cache = t.forward(torch.tensor([prompt])).past_key_values
    _, _, out = verify(t, nodes, root, len(prompt), cache)
    ref_a = _steps(t, prompt, [root, *a[:3]])
    ref_b = _steps(t, prompt, [root, *b[:2]])
    rows = out.logits[0]
    for row, want in ((0, ref_a[0]), (1, ref_a[1]), (2, ref_b[1]), (3, ref_a[2]),
                      (4, ref_b[2]), (5, ref_a[3])):
        assert torch.equal(rows[row], want), row


def test_fp32_targets_keep_transformers_attention(tiny_target):
    assert not tiny_target.stepwise
    assert tiny_target.model.config._attn_implementation == "sdpa"


def test_dtype_names():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("fp32") is torch.float32
    with pytest.raises(DraftVocabError, match="--dtype is one of fp32, bf16"):
        parse_dtype("fp8")


def test_tree_rows_leave_the_cache_tensors_as_they_found_them(smol_bf16):
    """Tree rows borrow cache slots for their ancestors' keys (`stepwise.attention`); every
    slot holds its own key and value again once the layer's attention returns."""
    from transformers import AttentionInterface

    from draftvocab.engine import stepwise

    t, calls = smol_bf16, []

    def checked(module, query, key, value, attention_mask, **kwargs):
        before = key.clone(), value.clone()
        out = stepwise.attention(module, query, key, value, attention_mask, **kwargs)
        calls.append(torch.equal(key, before[0]) and torch.equal(value, before[1]))
        return out

    prompt = t.prompt_ids([{"role": "user", "content": "Name a colour."}])
    nodes = [DraftNode(11, -1, 1), DraftNode(12, -1, 1), DraftNode(13, 1, 2),
             DraftNode(14, 0, 2), DraftNode(15, 2, 3)]
    cache = t.forward(torch.tensor([prompt])).past_key_values
    AttentionInterface.register(stepwise.NAME, checked)
    try:
        verify(t, nodes, 504, len(prompt), cache)
    finally:
        AttentionInterface.register(stepwise.NAME, stepwise.attention)
    assert len(calls) == t.config.num_hidden_layers and all(calls)


def test_chain_rows_share_one_attention_call_and_equal_steps_across_a_bucket(smol_bf16,
                                                                            monkeypatch):
    """Chain rows over a `SlabLayer` cache attend in one call per layer when they pad to one
    length, in two when they straddle a `BUCKET` boundary or outnumber `MAX_ROWS`; either way
    each row equals its one-token step."""
    from draftvocab.engine import stepwise

    t, calls = smol_bf16, []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    base = t.prompt_ids([{"role": "user", "content": "Count to twenty, slowly."}])
    text = t.tokenizer.encode(" One, two, three, four, five, six, seven, eight, nine, ten, "
                              "eleven", add_special_tokens=False)
    cases = ((stepwise.BUCKET * 2 - 2, 5, 2), (stepwise.BUCKET * 2 + 3, 4, 1),
             (stepwise.BUCKET * 3, stepwise.MAX_ROWS + 2, 2))  # (cached, rows, calls per layer)
    assert len(text) >= stepwise.MAX_ROWS + 2
    for n, rows, shared in cases:
        prompt = (base * 10)[:n]
        ref = _steps(t, prompt, text[:rows])
        cache = t.forward(torch.tensor([prompt])).past_key_values
        assert isinstance(cache.layers[0], stepwise.SlabLayer)
        nodes = [DraftNode(tok, j - 1, j + 1) for j, tok in enumerate(text[1:rows])]
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
            _, _, out = verify(t, nodes, text[0], n, cache)
        assert len(calls) == t.config.num_hidden_layers * shared, (n, rows)
        for r in range(rows):
            assert torch.equal(out.logits[0, r], ref[r]), (n, r)


def test_slab_layer_appends_in_place_and_keeps_what_a_crop_left():
    from draftvocab.engine.stepwise import BUCKET, SlabLayer

    layer, first = SlabLayer(), torch.randn(1, 2, BUCKET - 1, 4)
    keys, _ = layer.update(first, -first)
    slab = keys.data_ptr()
    keys, values = layer.update(torch.ones(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    assert keys.data_ptr() == slab and keys.shape[2] == BUCKET  # written in place
    assert torch.equal(keys[:, :, :-1], first) and torch.equal(values[:, :, :-1], -first)
    wide, _ = keys._wide
    assert wide.shape[2] % BUCKET == 0 and wide.shape[2] >= keys.shape[2]
    layer.crop(-3)  # a view: the next update writes after what is left
    keys, _ = layer.update(torch.full((1, 2, 2, 4), 7.0), torch.zeros(1, 2, 2, 4))
    assert keys.data_ptr() == slab and keys.shape[2] == BUCKET - 1
    assert torch.equal(keys[:, :, :BUCKET - 3], first[:, :, :BUCKET - 3])
    assert torch.equal(keys[:, :, -2:], torch.full((1, 2, 2, 4), 7.0))
    grown, _ = layer.update(torch.ones(1, 2, BUCKET * 3, 4), torch.ones(1, 2, BUCKET * 3, 4))
    assert grown.shape[2] == BUCKET * 4 - 1 and torch.equal(grown[:, :, :BUCKET - 1], keys)
    assert grown._wide[0].shape[2] == BUCKET * 4
