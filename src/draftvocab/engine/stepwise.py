"""Verify attention that computes every drafted row exactly as a one-token decode step would.

Why: greedy speculative decoding is lossless only if the verify forward's logits for a row are
those of the one-token step plain decoding would take there. In bf16 on this CPU the norms and
the Linear layers give bit-identical rows for any row count (a one-row product computed as two,
`target._few_rows_linear`), but attention does not: a k-row call reduces over the whole key
length with the later keys masked, in another summation order than the one-token step's; it
flipped the greedy token at 29 of 1,152 Spec-Bench positions (in fp32 the difference is ~1e-6
and was never seen to flip one). So inside `stepwise_rows(mask)`, an attention call with a 4D
mask (a verify) computes each query row as the call a plain decode step makes there, over just
the keys that row sees, in cache order (both in the packed grouped-query form, which is also
5x faster in bf16 than SDPA's `enable_gqa`; one call per row before the slab below). A tree row's
keys that are not a prefix of the cache (its ancestors) are moved into place in the cache
tensor for its call and put back after, rather than gathered with the whole prefix per row and
layer: a 6-row tree verify over 1,000 cached tokens went from 1.9–2.1 to 1.4–1.5 plain steps
(`benchmarks/bench_tree_verify.py`, two runs). Every other call (prefill, batches) is
transformers' SDPA unchanged.

Chain rows in one call. Each row as its own SDPA call costs a plain step's attention again.
Rows can share a call only if it gives each of them the bits a one-token step gives: measured
on this CPU's kernel, a masked call over keys 0..L-1 gives a row exactly what a one-row call
with the same L and mask row gives, whatever the other rows (6.5k rows: cache lengths 20–1,300,
2–17 rows), but not what a call over another key length gives (a sixth of the cases differed).
So with the target's cache in `SlabLayer`s — a zeroed slab, the keys a view of it — every
one-token step and every verify row attends over the keys up to the next multiple of `BUCKET`
(slots past its own keys masked, whatever they hold), and verify rows that see a prefix of the
cache and round up to the same length share one call (`tests/engine/test_stepwise.py`). A tree
row that borrows slots is still a call of its own: a masked key *between* visible ones shifts
how the kernel pairs the bf16 products, and did change one row in 2.9k.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

NAME = "draftvocab_stepwise"
_ROWS = contextvars.ContextVar("draftvocab_stepwise", default=None)
BUCKET = 64  # a call attends over the keys up to the next multiple of this many slots
MAX_ROWS = 16  # rows per shared call: the row counts measured exact (2-17), not more


class SlabLayer(DynamicLayer):
    """A full-attention KV-cache layer whose keys and values are views of a zeroed slab with
    room past them up to the next `BUCKET` multiple (`attention` reads that far, masked).
    Appending writes into the slab instead of concatenating the whole cache every step;
    cropping to a view (`decode._keep_cache`, `crop`) keeps the slab."""

    _slabs: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys.numel() else 0
        end = n + key_states.shape[-2]
        slabs = self._slabs
        if (slabs is None or self.keys.numel() and self.keys.data_ptr() != slabs[0].data_ptr()
                or slabs[0].shape[-2] < _padded_length(end)):
            b, h, _, d = key_states.shape
            room = max(_padded_length(end), 2 * slabs[0].shape[-2] if slabs else 0)
            slabs = tuple(key_states.new_zeros(b, h, room, d) for _ in range(2))
            if n:
                slabs[0][..., :n, :] = self.keys
                slabs[1][..., :n, :] = self.values
            self._slabs = slabs
        slabs[0][..., n:end, :] = key_states
        slabs[1][..., n:end, :] = value_states
        self.keys, self.values = slabs[0][..., :end, :], slabs[1][..., :end, :]
        wide = _padded_length(end)  # what a one-token step at `end` attends over, masked
        self.keys._wide = slabs[0][..., :wide, :], slabs[1][..., :wide, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._slabs = None
        super().reset()


def new_cache(config):
    """A DynamicCache for `config` with `SlabLayer`s for its full-attention layers."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cache.layers = [SlabLayer() if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


def _padded_length(n: int) -> int:
    return -(-n // BUCKET) * BUCKET


@functools.lru_cache(maxsize=512)
def _mask(seen: tuple[int, ...], length: int, group: int, dtype: torch.dtype,
          device: torch.device) -> torch.Tensor:
    """Additive mask [rows * group, length]: row r's `group` packed heads see keys
    0..seen[r]-1. Cached: a decode step's is the same in every layer."""
    keys = torch.arange(length, device=device)
    see = keys[None] < torch.tensor(seen, device=device)[:, None]
    mask = torch.zeros(len(seen), length, dtype=dtype, device=device)
    mask.masked_fill_(~see, torch.finfo(dtype).min)
    return mask.repeat_interleave(group, 0)


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

    @functools.cached_property
    def groups(self) -> list[tuple[int, list[int]]]:
        """The prefix rows' shared calls in a slab cache, as (padded length, rows), at most
        `MAX_ROWS` rows each: the same in every layer, so planned once per forward."""
        groups: list[tuple[int, list[int]]] = []
        for r in range(len(self.seen)):
            if self.moves[r] is not None:
                continue
            length = _padded_length(self.seen[r])
            if not groups or groups[-1][0] != length or len(groups[-1][1]) == MAX_ROWS:
                groups.append((length, []))
            groups[-1][1].append(r)
        return groups


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


def _rows_call(packed, wide, seen: list[int], scale):
    """`packed` [R, Hkv, G, D] rows that each see a prefix of the cache (seen[r] keys) and round
    up to one padded length, over `wide` (a `SlabLayer`'s keys and values at that length);
    returns [1, Hkv, R * G, D] (row-major per key head)."""
    r, hkv, g, d = packed.shape
    key, value = wide
    length = key.shape[2]
    query = packed if r == 1 else packed.transpose(0, 1).reshape(1, hkv, r * g, d)
    mask = _mask(tuple(seen), length, g, query.dtype, query.device)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                            scale=scale)


def _widened(wide, length: int):
    """A `SlabLayer`'s (keys, values) views cut or widened to `length` slots."""
    key, value = wide
    if key.shape[2] == length:
        return wide
    size = (*key.shape[:2], length, key.shape[3])
    return key.as_strided(size, key.stride()), value.as_strided(size, value.stride())


def attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention-function signature (query [B, H, q, D], key/value [B, Hkv, kv,
    D]; returns [B, q, H, D]). A plain decode step (one query, no mask) and every verify row
    attend as `_rows_call` (keys in a `SlabLayer`) or `_one_query` (any other cache) does;
    anything else is transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows: Rows | None = _ROWS.get()
    scale = kwargs.get("scaling")
    b, h, q, d = query.shape
    hkv = key.shape[1]
    wide = getattr(key, "_wide", None) if b == 1 else None  # a SlabLayer's keys
    if q == 1 and attention_mask is None and kwargs.get("dropout", 0.0) == 0.0:
        packed = query.reshape(b, hkv, h // hkv, d)
        if wide is not None:
            out = _rows_call(packed, wide, [key.shape[2]], scale)
        else:
            out = _one_query(packed, key, value, scale)
        return out.reshape(b, h, 1, d).transpose(1, 2).contiguous(), None
    if (rows is None or b != 1 or attention_mask is None or attention_mask.dim() != 4
            or len(rows.seen) != q):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # Every row packed at once: row r's packed heads are packed[r], contiguous as a decode
    # step's. Rows that see a prefix of the cache and pad to one length share a call (slab
    # caches). A tree row sees the prefix 0..m0-1 and some later keys (its ancestors): those
    # are copied into slots m0.. of the cache tensor itself, so that the row attends over a
    # view of it as a decode step would; the slots are restored after the last row. (Gathering
    # the whole prefix per row instead cost more than the rows' attention on long prompts.)
    g = h // hkv
    packed = query[0].transpose(0, 1).reshape(q, hkv, g, d)
    groups = rows.groups if wide is not None else []
    if len(groups) == 1 and len(groups[0][1]) == q:  # a chain: every row in one call
        got = _rows_call(packed, _widened(wide, groups[0][0]), rows.seen, scale)
        return got.reshape(hkv, q, g, d).transpose(0, 1).reshape(1, q, h, d), None
    outs: list[torch.Tensor | None] = [None] * q
    for length, group in groups:
        # prefix rows are rows 0..p-1 (each sees every row before it), so a group is a slice
        got = _rows_call(packed[group[0]:group[-1] + 1], _widened(wide, length),
                         [rows.seen[r] for r in group], scale)
        got = got.reshape(hkv, len(group), g, d)
        for j, r in enumerate(group):
            outs[r] = got[:, j]
    tail = None
    try:
        for r in sorted(range(q), key=lambda r: rows.moves[r] is not None):  # prefix rows first
            if outs[r] is not None:
                continue
            n, move = rows.seen[r], rows.moves[r]
            if move is not None:
                if tail is None:
                    tail = key[:, :, rows.m0:].clone(), value[:, :, rows.m0:].clone()
                key[:, :, rows.m0:n] = tail[0].index_select(2, move)
                value[:, :, rows.m0:n] = tail[1].index_select(2, move)
            if wide is not None:
                got = _rows_call(packed[r:r + 1], _widened(wide, _padded_length(n)), [n], scale)
                outs[r] = got[0]
            else:
                outs[r] = _one_query(packed[r:r + 1], key[:, :, :n], value[:, :, :n], scale)[0]
    finally:
        if tail is not None:
            key[:, :, rows.m0:], value[:, :, rows.m0:] = tail
    return torch.stack(outs).reshape(1, q, h, d), None


def install(model) -> None:
    """Make `model` use this attention (SDPA's masks, SDPA itself outside `stepwise_rows`)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
