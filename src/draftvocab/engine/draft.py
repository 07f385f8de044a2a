"""The EAGLE-3 draft: fc fusion of three target layers, one decoder layer over the 2d-wide
[embedding ; hidden] input, a norm, and an LM head over the draft vocabulary (k rows).

Key names and config fields are SpecForge's/SGLang's (`fc.weight`, `midlayer.*`, `norm.weight`,
`lm_head.weight`, `d2t`, `t2d`; `draft_vocab_size`, `target_hidden_size`), so a checkpoint saved
here loads there. The token embedding is the target's, frozen and never saved. Attention is
written out (not borrowed from transformers) because drafting needs explicit masks: causal over
the accepted prefix, diagonal across training-time-test steps, ancestor-only inside a tree.

Alignment (EAGLE): the draft's input at position t is the pair (target hidden state of token t,
embedding of token t+1) and it predicts token t+2, i.e. it should match the target's logits at
t+1. Looking j steps further ahead from t, the hidden input is the draft's own output of step
j-1 at t, the embedding is of token t+1+j, the rotary position is t+j, and attention sees the
real-feature keys at positions <= t plus the keys of steps 1..j at t itself (training-time test
and chain drafting use the same rule).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from draftvocab.core.atomic import atomic_directory
from draftvocab.core.errors import DraftVocabError

ARCHITECTURE = "LlamaForCausalLMEagle3"


@dataclass
class DraftConfig:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # the target's V
    draft_vocab_size: int  # k
    target_hidden_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    target_layers: tuple[int, ...] = (1, 14, 26)

    @classmethod
    def for_target(cls, target, draft_vocab_size: int | None = None) -> DraftConfig:
        """Same widths as the loaded target (as SpecForge's EAGLE-3 configs), k rows."""
        return cls.from_target_config(target.config.to_dict(), draft_vocab_size,
                                      tuple(target.layers))

    @classmethod
    def from_target_config(cls, cfg: dict[str, Any], draft_vocab_size: int | None = None,
                           target_layers: tuple[int, ...] | None = None) -> DraftConfig:
        """The same from a target's HF config dict (no weights needed); default layers are
        EAGLE-3's low/middle/high for its depth."""
        from draftvocab.core.assets import config_vocab_size
        from draftvocab.engine.target import eagle3_layers

        if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
            cfg = cfg["text_config"]
        heads = int(cfg["num_attention_heads"])
        rope = cfg.get("rope_parameters") or {}
        vocab = config_vocab_size(cfg)
        return cls(
            hidden_size=int(cfg["hidden_size"]), intermediate_size=int(cfg["intermediate_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
            vocab_size=vocab, draft_vocab_size=int(draft_vocab_size or vocab),
            target_hidden_size=int(cfg["hidden_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
            target_layers=tuple(target_layers or eagle3_layers(int(cfg["num_hidden_layers"]))),
        )

    def to_hf(self) -> dict[str, Any]:
        """config.json: LlamaConfig fields + the EAGLE-3 ones SpecForge/SGLang read."""
        d = asdict(self)
        d["target_layers"] = list(self.target_layers)
        return {"architectures": [ARCHITECTURE], "model_type": "llama", "num_hidden_layers": 1,
                "hidden_act": "silu", "tie_word_embeddings": False,
                "rope_scaling": None, **d,
                "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(self.target_layers)}}

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> DraftConfig:
        names = cls.__dataclass_fields__
        missing = [n for n in ("hidden_size", "intermediate_size", "num_attention_heads",
                               "draft_vocab_size", "vocab_size") if n not in d]
        if missing:
            raise DraftVocabError(f"draft config lacks {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in names}
        heads = int(d["num_attention_heads"])
        kw.setdefault("num_key_value_heads", heads)
        kw.setdefault("head_dim", int(d["hidden_size"]) // heads)
        kw.setdefault("target_hidden_size", int(d["hidden_size"]))
        layers = (d.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        kw["target_layers"] = tuple(kw.get("target_layers") or layers or (1, 14, 26))
        return cls(**kw)


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


def _rope_tables(positions: torch.Tensor, dim: int, theta: float, dtype) -> tuple[torch.Tensor,
                                                                                  torch.Tensor]:
    """Llama rotary cos/sin [B, 1, T, D] at positions [B, T] (shared by q and k)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device,
                                        dtype=torch.float32) / dim))
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
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=1.0 / math.sqrt(c.head_dim),
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


def identity_mapping(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d2t/t2d of the full vocabulary (k = V): every offset 0, every target id kept."""
    return torch.zeros(vocab_size, dtype=torch.long), torch.ones(vocab_size, dtype=torch.bool)


class DraftBase(nn.Module):
    """What every draft here shares: a k-row vocabulary mapped to the target's by d2t/t2d, the
    target's frozen token embedding (kept out of state_dict(), so checkpoints omit it), and the
    fc fusion of the three captured target layers."""

    def __init__(self, config: DraftConfig, embed_tokens: nn.Embedding,
                 d2t: torch.Tensor | None = None, t2d: torch.Tensor | None = None):
        super().__init__()
        c = config
        self.config = c
        if d2t is None or t2d is None:
            if c.draft_vocab_size != c.vocab_size:
                raise DraftVocabError("a trimmed draft (k < V) needs its d2t/t2d mapping")
            d2t, t2d = identity_mapping(c.vocab_size)
        check_mapping(d2t, t2d, c.draft_vocab_size, c.vocab_size)
        self.register_buffer("d2t", d2t.to(torch.long).clone())
        self.register_buffer("t2d", t2d.to(torch.bool).clone())
        self._embed = [embed_tokens]
        if embed_tokens.embedding_dim != c.hidden_size:
            raise DraftVocabError(
                f"draft hidden_size {c.hidden_size} != target embedding width "
                f"{embed_tokens.embedding_dim}")
        self.fc = nn.Linear(3 * c.target_hidden_size, c.hidden_size, bias=False)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self._embed[0]

    def fuse(self, target_hidden: torch.Tensor) -> torch.Tensor:
        return self.fc(target_hidden)

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def target_to_draft(self) -> torch.Tensor:
        """int64[V]: draft id of each target id, -1 where the draft cannot emit it."""
        ids = torch.full((self.config.vocab_size,), -1, dtype=torch.long, device=self.d2t.device)
        k = self.config.draft_vocab_size
        ids[self.to_target_ids(torch.arange(k, device=self.d2t.device))] = torch.arange(
            k, device=self.d2t.device)
        return ids


class Eagle3Draft(DraftBase):
    """EAGLE-3 draft over a k-token vocabulary; `d2t` maps its ids to the target's.

    One step: `logits, hidden_out, k, v = draft.step(hidden, ids, positions, past_k, past_v,
    mask)` where `hidden` is `draft.fuse(target_hidden)` for positions the target has seen and
    the previous step's `hidden_out` while drafting ahead.
    """

    def __init__(self, config: DraftConfig, embed_tokens: nn.Embedding,
                 d2t: torch.Tensor | None = None, t2d: torch.Tensor | None = None):
        super().__init__(config, embed_tokens, d2t, t2d)
        c = config
        self.midlayer = MidLayer(c)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.draft_vocab_size, bias=False)

    def step(self, hidden, input_ids, positions, past_k=None, past_v=None, mask=None,
             rows: torch.Tensor | None = None):
        """One draft forward; logits [B, T, k], or [n, k] for the positions `rows` (bool
        [B, T]) only — training needs them where the loss looks, and the LM head is most of
        the cost."""
        with torch.no_grad():
            embeds = self.embed_tokens(input_ids).to(hidden.dtype)
        h, k, v = self.midlayer(embeds, hidden, positions, past_k, past_v, mask)
        return self.lm_head(self.norm(h if rows is None else h[rows])), h, k, v


def check_mapping(d2t: torch.Tensor, t2d: torch.Tensor, k: int, vocab_size: int) -> None:
    if d2t.shape != (k,) or t2d.shape != (vocab_size,):
        raise DraftVocabError(
            f"vocab mapping shapes d2t {tuple(d2t.shape)}, t2d {tuple(t2d.shape)} do not match "
            f"draft_vocab_size {k} and target vocab_size {vocab_size}")
    ids = torch.arange(k, dtype=torch.long) + d2t.cpu().long()
    if not torch.equal(torch.nonzero(t2d.cpu()).flatten(), ids):
        raise DraftVocabError("vocab mapping is inconsistent: nonzero(t2d) != d2t + arange(k)")


# --- checkpoints -------------------------------------------------------------------------------


def save_draft(draft: Eagle3Draft, path: str | os.PathLike, *, dtype=None) -> Path:
    """config.json + model.safetensors (SpecForge/SGLang key names), written atomically."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        write_draft_files(draft, tmp, dtype=dtype)
    return path


def write_draft_files(draft: Eagle3Draft, directory: Path, *, dtype=None) -> None:
    """The checkpoint's two files into `directory` (the caller makes that atomic)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in draft.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(draft.config.to_hf(), indent=2))


def read_config(path: str | os.PathLike) -> DraftConfig:
    """The DraftConfig of a draft checkpoint directory (config.json only, no weights)."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise DraftVocabError(f"{path} is not a draft checkpoint (no config.json)")
    try:
        d = json.loads(cfg_file.read_text())
        if isinstance(d, dict) and d.get("drafter") == "specblock":
            from draftvocab.engine.specblock import SpecBlockConfig
            return SpecBlockConfig.from_hf(d)
        return DraftConfig.from_hf(d)
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise DraftVocabError(f"{cfg_file}: not a valid draft config ({exc})") from None


def aux_layers(paths) -> tuple[int, ...] | None:
    """The target aux layers that every draft in `paths` reads (None without drafts): load the
    target with these so its features are the ones the drafts were trained on."""
    found = {tuple(read_config(p).target_layers) for p in paths}
    if len(found) > 1:
        raise DraftVocabError(f"these drafts read different target layers: {sorted(found)}")
    return found.pop() if found else None


def read_state(path: str | os.PathLike, config: DraftConfig | None = None
               ) -> dict[str, torch.Tensor]:
    """The weights of a draft checkpoint directory, checked to hold an EAGLE-3 draft."""
    from draftvocab.vocab.mapping import load_tensor_file

    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise DraftVocabError(f"{path} is not a draft checkpoint (no model.safetensors)")
    state = load_tensor_file(weights)
    expected = {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"}
    specblock = is_specblock(config if config is not None else read_config(path))
    layer, kind = ("layers.", "a SpecBlock") if specblock else ("midlayer.", "an EAGLE-3")
    if not expected <= state.keys() or not any(k.startswith(layer) for k in state):
        raise DraftVocabError(f"{weights} is not {kind} draft (missing "
                              f"{sorted(expected - state.keys()) or [layer + '*']})")
    return state


def is_specblock(config: DraftConfig) -> bool:
    return getattr(config, "block_size", None) is not None


def require_eagle3(config: DraftConfig, what: str) -> None:
    """SpecBlock drafts run in this engine only: SpecForge/SGLang/vLLM serve EAGLE-3."""
    if is_specblock(config):
        raise DraftVocabError(f"{what} needs an EAGLE-3 draft; this is a SpecBlock draft, which "
                              "only draftvocab's own decoder runs")


def check_fits(config: DraftConfig, target) -> None:
    """A draft runs on a target only with the same aux layers, hidden size and V."""
    if tuple(config.target_layers) != tuple(target.layers):
        why = (f"the draft reads target aux layers {list(config.target_layers)}, the target "
               f"captures {list(target.layers)} (load it with layers="
               f"{tuple(config.target_layers)})")
    elif config.target_hidden_size != target.hidden_size:
        why = (f"the draft expects target hidden size {config.target_hidden_size}, target has "
               f"{target.hidden_size}")
    elif config.vocab_size != target.vocab_size:
        why = (f"the draft mapping is for V={config.vocab_size}, target vocab_size is "
               f"{target.vocab_size}")
    else:
        return
    raise DraftVocabError(f"draft does not fit the target: {why}")


def load_draft(path: str | os.PathLike, target, *, dtype=None) -> DraftBase:
    """Load a draft checkpoint for `target`; mismatches are one clear error, not a traceback."""
    path = Path(path)
    config = read_config(path)
    check_fits(config, target)
    state = read_state(path, config)
    cls = Eagle3Draft
    if is_specblock(config):
        from draftvocab.engine.specblock import SpecBlockDraft as cls
    draft = cls(config, target.model.get_input_embeddings(), state["d2t"], state["t2d"])
    try:
        draft.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DraftVocabError(f"{path / 'model.safetensors'} does not fit its config: {first}") from None
    return draft.to(device=target.device, dtype=dtype or target.dtype)
