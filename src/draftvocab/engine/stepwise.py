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
form, `_one_query`, which is also 5x faster in bf16 than SDPA's `enable_gqa`). A tree row's
keys that are not a prefix of the cache (its ancestors) are moved into place in the cache
tensor for its call and put back after, rather than gathered with the whole prefix per row and
layer: a 6-row tree verify over 1,000 cached tokens went from 1.9–2.1 to 1.4–1.5 plain steps
(`benchmarks/bench_tree_verify.py`, two runs). Every other call (prefill, batches) is
transformers' SDPA unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Rows:
    """Which keys each verify row sees, worked out once per forward (not per layer). Row r
    sees `seen[r]` keys: a prefix of the cache when `moves[r]` is None, else the keys 0..m0-1
    followed by tail keys `m0 + moves[r]` (its ancestors, in cache order)."""

    seen: list[int]
    moves: list[torch.Tensor | None]
    m0: int  # the first cache slot any row borrows


def _visible_keys(mask: torch.Tensor) -> Rows:
    rows = mask[0, 0]
    visible = [row.nonzero().squeeze(1)
               for row in (rows if rows.dtype == torch.bool else rows == 0)]
    prefix = []  # per row: the length m of the key prefix 0..m-1 it sees whole
    for idx in visible:  # sorted, distinct: idx[j] == j up to the first gap
        gaps = (idx != torch.arange(idx.numel(), device=idx.device)).nonzero()
        prefix.append(int(gaps[0]) if gaps.numel() else idx.numel())
    m0 = min((m for m, idx in zip(prefix, visible) if m < idx.numel()), default=0)
    moves = [None if m == idx.numel() else idx[m0:] - m0 for m, idx in zip(prefix, visible)]
    return Rows([idx.numel() for idx in visible], moves, m0)


def _one_query(packed, key, value, scale):
    """One query row, its heads packed per key head [B, Hkv, H/Hkv, D] (transformers'
    `pack_gqa`), over key/value [B, Hkv, n, D], no mask. SDPA's `enable_gqa` form of the
    same product took 5x longer in bf16 here (326 vs 61 us over 752 keys)."""
    return torch.nn.functional.scaled_dot_product_attention(packed, key, value, scale=scale)


def attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention-function signature (query [B, H, q, D], key/value [B, Hkv, kv,
    D]; returns [B, q, H, D]). A plain decode step (one query, no mask) and every verify row
    run `_one_query`; anything else is transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows: Rows | None = _ROWS.get()
    scale = kwargs.get("scaling")
    b, h, q, d = query.shape
    hkv = key.shape[1]
    if q == 1 and attention_mask is None and kwargs.get("dropout", 0.0) == 0.0:
        out = _one_query(query.reshape(b, hkv, h // hkv, d), key, value, scale)
        return out.reshape(b, h, 1, d).transpose(1, 2).contiguous(), None
    if (rows is None or b != 1 or attention_mask is None or attention_mask.dim() != 4
            or len(rows.seen) != q):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # Every row packed at once: row r's packed heads are packed[r], contiguous as a decode
    # step's. A tree row sees the prefix 0..m0-1 and some later keys (its ancestors): those
    # are copied into slots m0.. of the cache tensor itself, so that the row attends over a
    # view of it as a decode step would; the slots are restored after the last row. (Gathering
    # the whole prefix per row instead cost more than the rows' attention on long prompts.)
    packed = query[0].transpose(0, 1).reshape(q, hkv, h // hkv, d)
    outs: list[torch.Tensor | None] = [None] * q
    order = sorted(range(q), key=lambda r: rows.moves[r] is not None)  # prefix rows first
    tail = None
    try:
        for r in order:
            n, move = rows.seen[r], rows.moves[r]
            if move is not None:
                if tail is None:
                    tail = key[:, :, rows.m0:].clone(), value[:, :, rows.m0:].clone()
                key[:, :, rows.m0:n] = tail[0].index_select(2, move)
                value[:, :, rows.m0:n] = tail[1].index_select(2, move)
            outs[r] = _one_query(packed[r:r + 1], key[:, :, :n], value[:, :, :n], scale)
    finally:
        if tail is not None:
            key[:, :, rows.m0:], value[:, :, rows.m0:] = tail
    out = torch.cat(outs, dim=2)  # [1, Hkv, q * H/Hkv, D], rows in order
    return out.reshape(hkv, q, h // hkv, d).permute(1, 0, 2, 3).reshape(1, q, h, d), None


def install(model) -> None:
    """Make `model` use this attention (SDPA's masks, SDPA itself outside `stepwise_rows`)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
