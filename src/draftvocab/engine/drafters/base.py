"""The drafter protocol, and what every drafter shares: its config (`DraftConfig`, the target's
widths plus k), the d2t/t2d vocabulary mapping, the fc fusion of three target layers, and its
checkpoint files (config.json + model.safetensors with SpecForge's/SGLang's key names, so an
EAGLE-3 checkpoint saved here loads there; the frozen target embedding is never saved).

`Drafter` is the one interface `train`, `decode`, `acceptance` and `bench` meet: configure and
build, the training loss, teacher-forced chain logits, and the decoder that drafts with it. The
drafters themselves are `eagle3.py` and `specblock.py`; which config names which drafter is the
registry's (`drafters/__init__.py`). The nn pieces are `layers.py`.

Alignment (EAGLE): the draft's input at position t is the pair (target hidden state of token t,
embedding of token t+1) and it predicts token t+2, i.e. it should match the target's logits at
t+1. Looking j steps further ahead from t, the hidden input is the draft's own output of step
j-1 at t, the embedding is of token t+1+j, the rotary position is t+j, and attention sees the
real-feature keys at positions <= t plus the keys of steps 1..j at t itself (training-time test
and chain drafting use the same rule).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from draftvocab.core.atomic import atomic_directory
from draftvocab.core.errors import DraftVocabError

ARCHITECTURE = "LlamaForCausalLMEagle3"


@dataclass
class DraftConfig:
    """An EAGLE-3 draft's shape; drafters with more knobs subclass it (`SpecBlockConfig`)."""

    kind: ClassVar[str] = "eagle3"  # the drafter this config builds (registry key)

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

    def check_servable(self, what: str) -> None:
        """Raise unless SpecForge/SGLang/vLLM can run this draft (they serve EAGLE-3)."""


def identity_mapping(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d2t/t2d of the full vocabulary (k = V): every offset 0, every target id kept."""
    return torch.zeros(vocab_size, dtype=torch.long), torch.ones(vocab_size, dtype=torch.bool)


class Drafter(nn.Module, ABC):
    """The drafter protocol. Every drafter has a k-row vocabulary mapped to the target's by
    d2t/t2d, the target's frozen token embedding (kept out of state_dict(), so checkpoints omit
    it), the fc fusion of the three captured target layers, a final `norm` and an `lm_head`
    over the k draft ids; the rest is each drafter's own, behind the methods below."""

    config_class: ClassVar[type[DraftConfig]] = DraftConfig
    layer_prefix: ClassVar[str]  # its decoder layers' key prefix (checkpoint check)
    title: ClassVar[str]  # "an EAGLE-3", "a SpecBlock" (messages)
    proposes: ClassVar[str]  # the drafting API a decoder drives ("step", "block")
    # TrainConfig fields a resumed run ignores (fields added after this drafter's checkpoints)
    identity_omits: ClassVar[tuple[str, ...]] = ()

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

    # -- build and train ----------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def configure(cls, base: DraftConfig, train) -> DraftConfig:
        """This drafter's config from the target-shaped `base` and a `TrainConfig`."""

    @abstractmethod
    def label_steps(self, train) -> int:
        """How many steps ahead the training labels must reach (`labels.ttt_targets`)."""

    @abstractmethod
    def training_loss(self, target_hidden: torch.Tensor, batch, labels, train, step: int,
                      autocast) -> tuple[torch.Tensor, dict[str, Any]]:
        """Forward (under `autocast`) and loss of one batch at optimizer step `step`; returns
        the loss and its log fields ("acc": per-step top-1 accuracy among them)."""

    @abstractmethod
    def chain_logits(self, target_hidden: torch.Tensor, ids: torch.Tensor,
                     lengths: torch.Tensor, steps: int, rows: list[torch.Tensor]
                     ) -> list[torch.Tensor]:
        """Chain drafting replayed teacher-forced: per step j, the logits [n_j, k] of the
        chain's (j+1)-th token drafted from each position `rows[j]` (bool [B, T]) marks; what
        `acceptance.chain_tau` scores."""

    # -- decode -------------------------------------------------------------------------------

    @abstractmethod
    def decoder(self, target, options):
        """The decoder that drafts with this drafter (`decode.DecodeOptions` sets its knobs)."""

    def check_fits(self, target) -> None:
        check_fits(self.config, target)

    # -- shared pieces ------------------------------------------------------------------------

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


def check_mapping(d2t: torch.Tensor, t2d: torch.Tensor, k: int, vocab_size: int) -> None:
    if d2t.shape != (k,) or t2d.shape != (vocab_size,):
        raise DraftVocabError(
            f"vocab mapping shapes d2t {tuple(d2t.shape)}, t2d {tuple(t2d.shape)} do not match "
            f"draft_vocab_size {k} and target vocab_size {vocab_size}")
    ids = torch.arange(k, dtype=torch.long) + d2t.cpu().long()
    if not torch.equal(torch.nonzero(t2d.cpu()).flatten(), ids):
        raise DraftVocabError("vocab mapping is inconsistent: nonzero(t2d) != d2t + arange(k)")


def shift_left(x: torch.Tensor, n: int, fill) -> torch.Tensor:
    """x[:, n:] padded back to x's length with `fill` (along dim 1): what position t sees
    n tokens ahead."""
    if n == 0:
        return x
    pad = x.new_full((x.shape[0], min(n, x.shape[1]), *x.shape[2:]), fill)
    return torch.cat([x[:, n:], pad], dim=1)


# --- checkpoints -------------------------------------------------------------------------------


def save_draft(draft: Drafter, path: str | os.PathLike, *, dtype=None) -> Path:
    """config.json + model.safetensors (SpecForge/SGLang key names), written atomically."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        write_draft_files(draft, tmp, dtype=dtype)
    return path


def write_draft_files(draft: Drafter, directory: Path, *, dtype=None) -> None:
    """The checkpoint's two files into `directory` (the caller makes that atomic)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in draft.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(draft.config.to_hf(), indent=2))


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
