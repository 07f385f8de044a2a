"""Training labels from the target's logits, for any drafter: per step ahead j, the target's
distribution over the kept ids (the draft vocabulary, ascending = draft id order), its argmax as
a draft id, and the loss mask. Step j at draft position t predicts token t+2+j (EAGLE's
alignment, `drafters/base.py`), so it is scored against the target's row t+1+j.

Owns labels only; batches are `train.py`'s, the losses the drafters'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from draftvocab.engine.drafters.base import shift_left


@dataclass
class TTTTargets:
    """Labels for the TTT steps. Step j at draft position t is scored against row t+1+j of
    `probs` and `argmax`, under `masks[j][:, t]`."""

    probs: torch.Tensor  # [B, T, k]: the target distribution over the kept ids at each position
    argmax: torch.Tensor  # [B, T]: the target's argmax as a draft id, -1 outside the vocabulary
    masks: list[torch.Tensor]  # per step j: bool [B, T] over draft positions t


def ttt_targets(target_logits: torch.Tensor, batch, t2d: torch.Tensor,
                steps: int) -> TTTTargets:
    """Labels of step j at t: the target distribution at t+1+j over the kept ids (ascending =
    draft id order). Mask: token t+2+j is supervised and inside the sequence, and the target's
    argmax at t+1+j is in the draft vocabulary."""
    t2d = t2d.to(target_logits.device)
    kept = torch.nonzero(t2d).flatten()
    restricted = target_logits if len(kept) == len(t2d) else target_logits[..., kept]
    return kept_targets(restricted, target_logits.argmax(-1), batch, t2d, steps)


def kept_targets(kept_logits: torch.Tensor, argmax: torch.Tensor, batch,
                 t2d: torch.Tensor, steps: int) -> TTTTargets:
    """`ttt_targets` from the logits over the kept ids [B, T, k] and the target's argmax over
    all ids [B, T] (what a feature cache holds)."""
    kept = torch.nonzero(t2d).flatten()
    draft_id = torch.full(t2d.shape, -1, dtype=torch.long, device=t2d.device)
    draft_id[kept] = torch.arange(len(kept), device=t2d.device)
    probs = torch.softmax(kept_logits.float(), dim=-1)
    top = draft_id[argmax]  # [B, T]
    pos = torch.arange(batch.ids.shape[1], device=batch.ids.device)
    masks = []
    for j in range(steps):
        inside = pos[None, :] + 2 + j < batch.lengths[:, None]
        masks.append(shift_left(batch.supervised, 2 + j, False) & inside
                     & (shift_left(top, 1 + j, -1) >= 0))
    return TTTTargets(probs, top, masks)
