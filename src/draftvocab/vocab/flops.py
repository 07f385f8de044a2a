"""Per-token FLOPs of an EAGLE-3 draft model, read from a Hugging Face config.

Owns the cost model of the paper's section 2.3: a fixed part (feature fusion, one decoder
layer) plus an LM head that costs 2·d·k for a k-token vocabulary, and the latency reduction
R(k) it implies. Knows nothing about token counts or which k is best.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, overload

import numpy as np

from draftvocab.core.assets import load_config
from draftvocab.core.errors import DraftVocabError

_REQUIRED = ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class DraftFlops:
    """FLOPs per drafted token of an EAGLE-3 draft, split by component.

    Example:
        >>> f = flops_breakdown("src/draftvocab/data/llama-3.1-8b-config.json")
        >>> f.total()
        1637875712
    """

    hidden_size: int
    target_hidden_size: int
    vocab_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    fusion: int
    attention: int
    mlp: int

    @property
    def fixed(self) -> int:
        """F_fixed: everything that does not depend on the vocabulary size."""
        return self.fusion + self.attention + self.mlp

    @overload
    def lm_head(self, k: None = None) -> int: ...
    @overload
    def lm_head(self, k: int) -> int: ...
    @overload
    def lm_head(self, k: np.ndarray) -> np.ndarray: ...

    def lm_head(self, k: int | np.ndarray | None = None) -> int | np.ndarray:
        """LM head FLOPs, 2·d·k; k defaults to the full vocabulary."""
        k = self.vocab_size if k is None else k
        if isinstance(k, np.ndarray):
            return 2 * self.hidden_size * k.astype(np.int64)
        return 2 * self.hidden_size * int(k)

    def total(self, k: int | np.ndarray | None = None) -> int | np.ndarray:
        """Whole-draft FLOPs per token with a k-token head."""
        return self.fixed + self.lm_head(k)

    def latency_reduction(self, k: int | np.ndarray) -> float | np.ndarray:
        """R(k) = 1 − (F_fixed + 2dk)/(F_fixed + 2dV), eq. 3; vectorised over arrays of k."""
        full = float(self.total())
        if isinstance(k, np.ndarray):
            return 1.0 - self.total(k).astype(np.float64) / full
        return 1.0 - float(self.total(int(k))) / full

    def rows(self, k: int | None = None) -> list[tuple[str, int, float]]:
        """(component, flops, fraction of total) rows, as in the paper's Table 1."""
        head = self.lm_head(k)
        total = self.fixed + head
        parts = [
            ("Feature fusion", self.fusion),
            ("Attention", self.attention),
            ("MLP", self.mlp),
            ("LM head", head),
            ("Total", total),
        ]
        return [(name, int(v), v / total) for name, v in parts]

    def to_json(self) -> dict[str, Any]:
        """Fields plus the derived totals, JSON-serialisable."""
        out: dict[str, Any] = {key: int(v) for key, v in asdict(self).items()}
        out["fixed"] = self.fixed
        out["lm_head"] = self.lm_head()
        out["total"] = self.total()
        return out


def _read_config(config: dict | str | os.PathLike) -> tuple[dict, str]:
    if isinstance(config, dict):
        return config, "<config dict>"
    return load_config(config), str(config)


def _positive_int(cfg: dict, key: str, source: str) -> int:
    value = cfg.get(key)
    if value is None:
        raise DraftVocabError(f"model config {source} has no '{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DraftVocabError(
            f"model config {source}: '{key}' must be a positive integer, got {value!r}"
        )
    return value


def _optional_int(cfg: dict, key: str, source: str, default: int) -> int:
    # HF configs write absent optional fields as null (and sometimes 0 for "same as heads").
    return _positive_int(cfg, key, source) if cfg.get(key) else default


def flops_breakdown(config: dict | str | os.PathLike) -> DraftFlops:
    """Per-token FLOPs of an EAGLE-3 draft for a target (or draft) HF `config.json`.

    `config` is a dict, a config file, or a directory holding `config.json`. Multimodal
    configs without a top-level `hidden_size` fall back to their `text_config`.

    Example:
        >>> flops_breakdown({"hidden_size": 64, "intermediate_size": 128,
        ...                  "num_attention_heads": 4, "vocab_size": 1000}).lm_head()
        128000
    """
    cfg, source = _read_config(config)
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]
        source = f"{source} (text_config)"
    d, inter, heads, vocab = (_positive_int(cfg, key, source) for key in _REQUIRED)
    target_d = _optional_int(cfg, "target_hidden_size", source, d)
    kv = _optional_int(cfg, "num_key_value_heads", source, heads)
    head_dim = _optional_int(cfg, "head_dim", source, d // heads)
    if head_dim <= 0:
        raise DraftVocabError(
            f"model config {source}: hidden_size {d} < num_attention_heads {heads}"
        )
    # EAGLE-3 fuses three target layers: fc is Linear(3·target_hidden → d).
    fusion = 2 * 3 * target_d * d
    # The decoder layer attends over [embedding; fused hidden], a 2d-wide input.
    q = 2 * (2 * d) * (heads * head_dim)
    kv_proj = 2 * 2 * (2 * d) * (kv * head_dim)
    o = 2 * (heads * head_dim) * d
    mlp = 3 * 2 * d * inter
    return DraftFlops(
        hidden_size=d,
        target_hidden_size=target_d,
        vocab_size=vocab,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        fusion=fusion,
        attention=q + kv_proj + o,
        mlp=mlp,
    )
