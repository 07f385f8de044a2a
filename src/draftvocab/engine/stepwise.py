"""Verify attention that computes every drafted row exactly as a one-token decode step would.

Why: greedy speculative decoding is lossless only if the verify forward's logits for a row are
those of the one-token step plain decoding would take there. On this CPU the Linear layers and
norms give bit-identical rows for any number of rows (fp32 and bf16), but attention does not: a
k-row call reduces over the whole key length with the later keys masked, in another summation
order than the one-token step's. In fp32 that is ~1e-6 and rarely flips a token; in bf16 it
flipped the greedy token at 29 of 1,152 Spec-Bench positions. So inside `stepwise_rows(mask)`, an
attention call with a 4D mask (a verify) runs each query row as its own one-query SDPA over just
the keys that row sees, in cache order — the very call a plain decode step makes. Every other
call (plain steps, prefill, training) is transformers' SDPA unchanged.
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
    seen = (rows if rows.dtype == torch.bool else rows == 0).cpu()
    counts = seen.sum(1).tolist()
    prefix = seen[:, 0].clone()  # a row whose keys are exactly 0 .. count-1
    for r, n in enumerate(counts):
        prefix[r] = bool(seen[r, :n].all())
    return [(n, None if p else seen[r].nonzero().squeeze(1).to(mask.device))
            for r, (n, p) in enumerate(zip(counts, prefix.tolist(), strict=True))]


def attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention-function signature (query [B, H, q, D], key/value [B, Hkv, kv,
    D]; returns [B, q, H, D]). Batch 1 only takes the row path (a verify is batch 1)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = _ROWS.get()
    if (rows is None or query.shape[0] != 1 or attention_mask is None
            or attention_mask.dim() != 4 or len(rows) != query.shape[2]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # what `sdpa_attention_forward` runs for one query and no mask (a plain decode step,
    # a one-row verify too): grouped-query heads, no causal flag
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = query.shape[1] != key.shape[1]
    scale = kwargs.get("scaling")
    outs = []
    for r, (n, idx) in enumerate(rows):
        k, v = ((key[:, :, :n], value[:, :, :n]) if idx is None
                else (key.index_select(2, idx), value.index_select(2, idx)))
        outs.append(sdpa(query[:, :, r:r + 1], k, v, scale=scale, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def install(model) -> None:
    """Make `model` use this attention (SDPA's masks, SDPA itself outside `stepwise_rows`)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
