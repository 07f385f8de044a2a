"""Resumable training checkpoints: `checkpoint-<step>/` holds the draft's own files
(config.json + model.safetensors) plus trainer_state.json (step, run identity, log, optimizer
param groups) and trainer_state.safetensors (AdamW moments, torch RNG state).

Owns the on-disk format and its atomic writes; what goes into the state and when to save or
resume is `train.py`'s.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from draftvocab.core.atomic import atomic_directory
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.drafters.base import Drafter, write_draft_files

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The highest-step complete checkpoint under `out`, or None."""
    out = Path(out)
    if not out.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in out.iterdir()
             if (m := CHECKPOINT_RE.match(p.name)) and (p / STATE_JSON).is_file()]
    return max(found)[1] if found else None


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"optimizer.{i}.{name}": v.detach().cpu().contiguous()
               for i, s in sd["state"].items() for name, v in s.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                    meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: Path, draft: Drafter, opt: torch.optim.Optimizer,
                    state: dict[str, Any]) -> Path:
    """checkpoint-<step>/: the draft (save_draft) + trainer_state.{json,safetensors}."""
    from safetensors.torch import save_file

    tensors, opt_meta = _optimizer_tensors(opt)
    tensors["rng.torch"] = torch.get_rng_state()
    with atomic_directory(path) as tmp:
        write_draft_files(draft, tmp)
        save_file(tensors, str(tmp / STATE_TENSORS), metadata={"format": "pt"})
        (tmp / STATE_JSON).write_text(json.dumps({**state, "optimizer": opt_meta}, indent=1))
    return path


def load_checkpoint(path: Path, draft: Drafter, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the draft's weights, the optimizer and the RNG from `path`; returns its state
    (step, identity, log, eval)."""
    from safetensors.torch import load_file

    try:
        state = json.loads((path / STATE_JSON).read_text())
        tensors = load_file(str(path / STATE_TENSORS))
        weights = load_file(str(path / "model.safetensors"))
        draft.load_state_dict({k: v.to(draft.d2t.device) for k, v in weights.items()})
        _load_optimizer(opt, tensors, state["optimizer"])
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DraftVocabError(f"cannot resume from {path}: {exc}") from None
    torch.set_rng_state(tensors["rng.torch"])
    return state
