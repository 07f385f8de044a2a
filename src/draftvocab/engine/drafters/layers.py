"""The neural pieces every drafter here is built from: RMSNorm, Llama rotary embeddings, an
attention with explicit masks, the gated MLP and the EAGLE-3 decoder layer (`MidLayer`).

Attention is written out (not borrowed from transformers) because drafting needs explicit
masks: causal over the accepted prefix, diagonal across training-time-test steps, ancestor-only
inside a tree. Parameter names are SpecForge's/SGLang's, so state dicts load there. Owns no
config and no checkpoint logic (`base.py`), no drafter (`eagle3.py`, `specblock.py`).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from draftvocab.engine.drafters.base import DraftConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


@functools.lru_cache(maxsize=8)
def _inverse_frequencies(dim: int, theta: float, device: torch.device) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def _rope_tables(positions: torch.Tensor, dim: int, theta: float, dtype) -> tuple[torch.Tensor,
                                                                                  torch.Tensor]:
    """Llama rotary cos/sin [B, 1, T, D] at positions [B, T] (shared by q and k)."""
    inv = _inverse_frequencies(dim, theta, positions.device)
    freqs = positions.to(torch.float32)[..., None] * inv  # [B, T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, c: DraftConfig):
        super().__init__()
        self.c = c
        width = 2 * c.hidden_size  # [embedding ; hidden]
        self.q_proj = nn.Linear(width, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(width, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(width, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x, positions, past_k, past_v, mask):
        """x [B, T, 2d]; past_k/v [B, KV, S, D] or None; mask bool [B|1, 1, T, S+T] (True =
        attend). Returns the output and this call's k, v (for the caller's cache)."""
        c = self.c
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        cos, sin = _rope_tables(positions, c.head_dim, c.rope_theta, q.dtype)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        keys = k if past_k is None else torch.cat([past_k, k], dim=2)
        values = v if past_v is None else torch.cat([past_v, v], dim=2)
        scale = 1.0 / math.sqrt(c.head_dim)
        if t == 1 and mask is None:
            # one query seeing every key (a decode step): its heads packed per key head, the
            # form that skips SDPA's grouped-query expansion (several times faster in bf16)
            kv = c.num_key_value_heads
            out = F.scaled_dot_product_attention(
                q.reshape(b, kv, -1, c.head_dim), keys, values, scale=scale)
            return self.o_proj(out.reshape(b, 1, -1)), k, v
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=scale,
            enable_gqa=c.num_attention_heads != c.num_key_value_heads)
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, c: DraftConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MidLayer(nn.Module):
    """The draft's decoder layer; attention reads [norm(embedding) ; norm(hidden)]."""

    def __init__(self, c: DraftConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.hidden_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, embeds, hidden, positions, past_k, past_v, mask):
        residual = hidden
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        attn, k, v = self.self_attn(x, positions, past_k, past_v, mask)
        h = residual + attn
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, k, v

