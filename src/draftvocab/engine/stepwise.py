"""Verify attention that computes every drafted row exactly as a one-token decode step would.

Why: greedy speculative decoding is lossless only if the verify forward's logits for a row are
those of the one-token step plain decoding would take there. In bf16 on this CPU the norms and
the Linear layers give bit-identical rows for any row count (a one-row product computed as two,
`target._few_rows_linear`), but attention does not: a k-row call reduces over the whole key
length with the later keys masked, in another summation order than the one-token step's; it
flipped the greedy token at 29 of 1,152 Spec-Bench positions (in fp32 the difference is ~1e-6
and was never seen to flip one). So inside `stepwise_rows(mask)`, an attention call with a 4D
mask (a verify) runs each query row as its own one-query SDPA over just the keys that row sees,
in cache order — the very call a plain decode step makes (both in the packed grouped-query
form, `_one_query`, which is also 5x faster in bf16 than SDPA's `enable_gqa`). Every other call
(prefill, batches) is transformers' SDPA unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

NAME = "draftvocab_stepwise"
_ROWS = contextvars.ContextVar("draftvocab_stepwise", default=None)


@contextlib.contextmanager
def stepwise_rows(mask: torch.Tensor):
    """Attention calls with a 4D mask inside this block run row by row (see the module);
    `mask` [1, 1, q, kv] (additive or boolean) says which keys each row sees."""
    token = _ROWS.set(_visible_keys(mask))
    try:
        yield
    finally:
        _ROWS.reset(token)


def _visible_keys(mask: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
    """Per query row: (number of keys it sees, their indices, or None when they are a prefix)."""
    rows = mask[0, 0]
    out = []
    for row in (rows if rows.dtype == torch.bool else rows == 0):
        idx = row.nonzero().squeeze(1)
        n = idx.numel()  # sorted, distinct: a prefix iff the last is n - 1
        out.append((n, None if n and int(idx[-1]) == n - 1 else idx))
    return out


def _one_query(query, key, value, scale):
    """One query row [B, H, 1, D] over key/value [B, Hkv, n, D], no mask: the query heads of
    each key head packed as rows (transformers' `pack_gqa`). SDPA's `enable_gqa` form of the
    same product took 5x longer in bf16 here (326 vs 61 us over 752 keys)."""
    b, h, _, d = query.shape
    packed = query.reshape(b, key.shape[1], h // key.shape[1], d)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, scale=scale)
    return out.reshape(b, h, 1, d)


def attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention-function signature (query [B, H, q, D], key/value [B, Hkv, kv,
    D]; returns [B, q, H, D]). A plain decode step (one query, no mask) and every verify row
    run `_one_query`; anything else is transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = _ROWS.get()
    scale = kwargs.get("scaling")
    if query.shape[2] == 1 and attention_mask is None and kwargs.get("dropout", 0.0) == 0.0:
        return _one_query(query, key, value, scale).transpose(1, 2).contiguous(), None
    if (rows is None or query.shape[0] != 1 or attention_mask is None
            or attention_mask.dim() != 4 or len(rows) != query.shape[2]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outs = []
    for r, (n, idx) in enumerate(rows):
        k, v = ((key[:, :, :n], value[:, :, :n]) if idx is None
                else (key.index_select(2, idx), value.index_select(2, idx)))
        outs.append(_one_query(query[:, :, r:r + 1], k, v, scale))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def install(model) -> None:
    """Make `model` use this attention (SDPA's masks, SDPA itself outside `stepwise_rows`)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
