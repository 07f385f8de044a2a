"""The EAGLE-3 drafter: fc fusion of three target layers, one decoder layer over the 2d-wide
[embedding ; hidden] input, a norm, and an LM head over the draft vocabulary (k rows); trained
with training-time test (TTT), drafted one step per forward by `decode.SpeculativeDecoder`.

Owns the model, the TTT forward and loss (soft targets: the target's distribution restricted
to the draft vocabulary, `train.ttt_targets`). The position/attention convention is
`base.py`'s; the training loop is `train.py`'s. Checkpoints keep SpecForge's/SGLang's names
(`fc.weight`, `midlayer.*`, `norm.weight`, `lm_head.weight`, `d2t`, `t2d`), so they serve there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.drafters.base import DraftConfig, Drafter, shift_left
from draftvocab.engine.drafters.layers import MidLayer, RMSNorm


class Eagle3Draft(Drafter):
    """EAGLE-3 draft over a k-token vocabulary; `d2t` maps its ids to the target's.

    One step: `logits, hidden_out, k, v = draft.step(hidden, ids, positions, past_k, past_v,
    mask)` where `hidden` is `draft.fuse(target_hidden)` for positions the target has seen and
    the previous step's `hidden_out` while drafting ahead.
    """

    layer_prefix = "midlayer."
    title = "an EAGLE-3"
    proposes = "step"
    # checkpoints from before SpecBlock existed still resume
    identity_omits = ("drafter", "block_size", "draft_layers", "shift", "inherit", "rank_head",
                      "valid_prefix", "rank_weight")

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

    # -- the drafter protocol -------------------------------------------------------------------

    @classmethod
    def configure(cls, base: DraftConfig, train) -> DraftConfig:
        return base

    def label_steps(self, train) -> int:
        return train.ttt_steps

    def training_loss(self, target_hidden, batch, labels, train, step: int, autocast
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
        with autocast:
            step_logits = ttt_forward(self, target_hidden, batch.ids, batch.lengths,
                                      train.ttt_steps, rows=labels.masks)
        loss, losses, correct, counted = ttt_loss(step_logits, labels, train.step_decay)
        return loss, {"step_loss": losses, "positions": counted[0],
                      "acc": [c / n if n else None
                              for c, n in zip(correct, counted, strict=True)]}

    def chain_logits(self, target_hidden, ids, lengths, steps: int, rows):
        # TTT step j at t reads the real token t+1+j: chain drafting whenever steps < j were
        # accepted, the only case that counts
        return ttt_forward(self, target_hidden, ids, lengths, steps, rows=rows)

    def decoder(self, target, options) -> SpeculativeDecoder:
        return SpeculativeDecoder.from_options(target, self, options)


# --- training-time test --------------------------------------------------------------------------


def ttt_mask(lengths: torch.Tensor, t: int, step: int) -> torch.Tensor:
    """Bool [B, 1, T, (step+1)T]: block 0 causal over real keys, blocks 1..step diagonal."""
    pos = torch.arange(t, device=lengths.device)
    causal = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] + 1 < lengths[:, None,
                                                                                     None])
    diag = torch.eye(t, dtype=torch.bool, device=lengths.device).expand(len(lengths), t, t)
    return torch.cat([causal] + [diag] * step, dim=2)[:, None]


def ttt_forward(draft: Eagle3Draft, target_hidden: torch.Tensor, ids: torch.Tensor,
                lengths: torch.Tensor, steps: int,
                rows: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Draft logits [B, T, k] of each TTT step; step j at t predicts token t+2+j. With
    `rows` (per step a bool [B, T], e.g. the loss masks), step j's logits are only those
    positions', [n_j, k].

    Step j at position t: hidden = fuse(target_hidden[t]) (j = 0) or step j-1's output at t,
    input token ids[t+1+j], rotary position t+j, keys = step 0's at positions <= t plus steps
    1..j's at t itself (base.py's convention, the same rule as chain drafting).
    """
    b, t = ids.shape
    positions = torch.arange(t, device=ids.device).expand(b, t)
    hidden = draft.fuse(target_hidden)
    past_k = past_v = None
    logits = []
    for j in range(steps):
        select = {} if rows is None else {"rows": rows[j]}
        out, hidden, k, v = draft.step(hidden, shift_left(ids, 1 + j, 0), positions + j,
                                       past_k, past_v, ttt_mask(lengths, t, j), **select)
        past_k = k if past_k is None else torch.cat([past_k, k], dim=2)
        past_v = v if past_v is None else torch.cat([past_v, v], dim=2)
        logits.append(out)
    return logits


def ttt_loss(step_logits: list[torch.Tensor], labels, step_decay: float
             ) -> tuple[torch.Tensor, list[float], list[int], list[int]]:
    """Sum over steps of step_decay**j * the masked mean soft cross-entropy (= KL to the
    target's restricted distribution up to a constant). Step logits are [B, T, k], or [n_j, k]
    at the positions of `labels.masks[j]` (`ttt_forward(..., rows=labels.masks)`); `labels`
    is a `train.TTTTargets`.

    Returns the loss, each step's loss, and each step's correct / counted positions (top-1:
    draft argmax == target argmax, over the loss mask).
    """
    total = step_logits[0].new_zeros((), dtype=torch.float32)
    losses, correct, counted = [], [], []
    for j, logits in enumerate(step_logits):
        mask = labels.masks[j]  # over draft positions t; label row t+1+j
        n = int(mask.sum())
        if n == 0:
            losses.append(0.0)
            correct.append(0)
            counted.append(0)
            continue
        rows = torch.nonzero(mask, as_tuple=True)
        label_rows = (rows[0], rows[1] + 1 + j)
        picked = logits if logits.dim() == 2 else logits[rows]
        logp = F.log_softmax(picked.float(), dim=-1)
        step_loss = -(labels.probs[label_rows] * logp).sum(-1).mean()
        total = total + step_decay**j * step_loss
        losses.append(float(step_loss.detach()))
        correct.append(int((picked.detach().argmax(-1) == labels.argmax[label_rows]).sum()))
        counted.append(n)
    return total, losses, correct, counted
