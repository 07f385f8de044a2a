"""The drafters behind one protocol (`base.Drafter`): EAGLE-3 (`eagle3.py`) and SpecBlock
(`specblock.py`), and the registry that maps a config's kind to its drafter.

This package is the only place that knows which drafters exist: `build_draft`, `read_config`
and `load_draft` pick the class from `TrainConfig.drafter` or from config.json's "drafter"
field (absent = EAGLE-3, SpecForge's format). Everything else (training, decoding, benchmarks)
holds a `Drafter` and calls its methods.

    >>> draft = load_draft("runs/draft", target)
    >>> draft.decoder(target, DecodeOptions()).generate(prompt_ids, 128)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine import quantize
from draftvocab.engine.drafters.base import (
    DraftConfig,
    Drafter,
    check_fits,
    check_mapping,
    save_draft,
    write_draft_files,
)
from draftvocab.engine.drafters.eagle3 import Eagle3Draft
from draftvocab.engine.drafters.specblock import SpecBlockConfig, SpecBlockDraft
from draftvocab.engine.rowforms import patch_linears

__all__ = ["DRAFTERS", "DraftConfig", "Drafter", "Eagle3Draft", "SpecBlockConfig",
           "SpecBlockDraft", "aux_layers", "build_draft", "check_fits", "check_mapping",
           "drafter_class", "load_draft", "read_config", "read_state", "save_draft",
           "write_draft_files"]

# kind -> drafter; the kind is TrainConfig.drafter and config.json's "drafter" field
DRAFTERS: dict[str, type[Drafter]] = {cls.config_class.kind: cls
                                      for cls in (Eagle3Draft, SpecBlockDraft)}


def drafter_class(config: DraftConfig) -> type[Drafter]:
    """The drafter a config builds."""
    return DRAFTERS[config.kind]


def build_draft(target, d2t: torch.Tensor | None = None, t2d: torch.Tensor | None = None,
                seed: int = 0, config=None) -> Drafter:
    """A fresh draft for `target`; k = len(d2t), or the full vocabulary without a mapping;
    the drafter `config.drafter` (a `TrainConfig`) names, EAGLE-3 without one.

    lm_head starts as the target's LM-head rows of the kept ids and the final norm as the
    target's final norm: the draft's hidden states live in the target's space, so this is a
    good, standard start. Everything else uses PyTorch's default init under `seed`.
    """
    k = int(d2t.numel()) if d2t is not None else target.vocab_size
    cls = DRAFTERS[config.drafter if config is not None else "eagle3"]
    dc = cls.configure(DraftConfig.for_target(target, k), config)
    torch.manual_seed(seed)
    draft = cls(dc, target.model.get_input_embeddings(), d2t, t2d)
    kept = draft.to_target_ids(torch.arange(k))
    head = target.model.get_output_embeddings()
    with torch.no_grad():
        if head is not None and head.weight.shape == (target.vocab_size, dc.hidden_size):
            draft.lm_head.weight.copy_(head.weight[kept].float())
        norm = getattr(getattr(target.model, "model", None), "norm", None)
        weight = getattr(norm, "weight", None)
        if weight is not None and weight.shape == draft.norm.weight.shape:
            draft.norm.weight.copy_(weight.float())
    return draft.float().to(target.device)


def read_config(path: str | os.PathLike) -> DraftConfig:
    """The config of a draft checkpoint directory (config.json only, no weights)."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise DraftVocabError(f"{path} is not a draft checkpoint (no config.json)")
    try:
        d = json.loads(cfg_file.read_text())
        kind = d.get("drafter") if isinstance(d, dict) else None
        return DRAFTERS.get(kind, Eagle3Draft).config_class.from_hf(d)
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
    """The weights of a draft checkpoint directory, checked to hold the drafter its config
    names."""
    from draftvocab.vocab.mapping import load_tensor_file

    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise DraftVocabError(f"{path} is not a draft checkpoint (no model.safetensors)")
    state = load_tensor_file(weights)
    expected = {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"}
    cls = drafter_class(config if config is not None else read_config(path))
    layer = cls.layer_prefix
    if not expected <= state.keys() or not any(k.startswith(layer) for k in state):
        raise DraftVocabError(f"{weights} is not {cls.title} draft (missing "
                              f"{sorted(expected - state.keys()) or [layer + '*']})")
    return state


def load_draft(path: str | os.PathLike, target, *, dtype=None, int8: bool | None = None
               ) -> Drafter:
    """Load a draft checkpoint for `target`; mismatches are one clear error, not a traceback.
    `int8` (default: on, unless `DRAFTVOCAB_DRAFT_INT8=0`): on CPU it decodes with weight-only
    int8 products (`quantize.py`; fewer bytes to read per draft forward, the same predictions
    measured)."""
    path = Path(path)
    config = read_config(path)
    check_fits(config, target)
    state = read_state(path, config)
    draft = drafter_class(config)(config, target.model.get_input_embeddings(), state["d2t"],
                                  state["t2d"])
    try:
        draft.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DraftVocabError(f"{path / 'model.safetensors'} does not fit its config: {first}") from None
    draft = draft.to(device=target.device, dtype=dtype or target.dtype)
    if quantize.enabled() if int8 is None else int8:
        return quantize.int8_linears(draft)  # CPU inference; elsewhere rowforms' products
    # decoding calls a draft one row at a time: the target's few-row products (rowforms.py)
    return patch_linears(draft)
