"""Held-out acceptance: the accept length τ a chain draft reaches on text it was not trained on,
measured during training without running the decoder.

Training accuracy says how often the draft's top-1 matches the target's on training positions;
what decides speed is τ, the tokens gained per target forward. On held-out text the target
generated greedily (`draftvocab regenerate`), chain drafting can be replayed exactly with one
teacher-forced forward: the draft at position t, step j, reads the real token t+1+j — which is
what it reads in decoding whenever its steps before j were accepted, the only case that counts.
So each reply is walked like the decoder walks it: at pending token n the draft proposes γ
tokens from position n−1, the leading ones equal to the target's argmax are accepted, one more
comes from the target, and decoding resumes after them. τ = reply tokens / verify rounds,
as `GenerationResult.mean_accept_length` counts it (a reply's last round is cut at its end).
The teacher-forced forward is the drafter's (`Drafter.chain_logits`).

    >>> held = prepare_heldout(target, examples, draft.t2d)
    >>> chain_tau(draft, held, gamma=3)     # {"tau": 1.52, "acc": [...], "rounds": 812}
    >>> first_token_outcomes(draft, held)   # per example: right, outside the vocabulary, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from draftvocab.engine.train import Batch, collate


@dataclass
class HeldOut:
    """Held-out examples with their target features, computed once (kept in memory)."""

    batches: list[tuple[Batch, torch.Tensor, torch.Tensor]]  # (batch, hidden, argmax target ids)


def prepare_heldout(target, examples: Sequence, batch_size: int = 8) -> HeldOut:
    batches = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size])
        batch = Batch(*(x.to(target.device) for x in (batch.ids, batch.supervised,
                                                       batch.lengths)))
        out = target.forward(batch.ids, use_cache=False)
        batches.append((batch, out.hidden, out.logits.argmax(-1)))
    return HeldOut(batches)


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def replay(correct: np.ndarray, supervised: np.ndarray) -> tuple[int, int]:
    """(tokens, rounds) of chain decoding over one example's supervised replies.

    correct[j, t]: the draft's step j at position t equals the target's argmax (predicts token
    t+2+j). A reply [s, e) starts after the prefill produced token s; at pending token n the
    draft drafts from position n−1."""
    gamma = correct.shape[0]
    tokens = rounds = 0
    for s, e in _spans(supervised):
        n = s  # token s comes from the prefill
        while n + 1 < e:
            accepted = 0
            while accepted < gamma and n + 1 + accepted < e and correct[accepted, n - 1]:
                accepted += 1
            gained = min(accepted + 1, e - 1 - n)
            tokens += gained
            rounds += 1
            n += gained
    return tokens, rounds


def _drafting_rows(batch) -> torch.Tensor:
    """Bool [B, T]: the positions the draft drafts from, those whose next token is a reply
    token."""
    rows = torch.zeros_like(batch.supervised)
    rows[:, :-1] = batch.supervised[:, 1:]
    return rows


@torch.no_grad()
def chain_tau(draft, held: HeldOut, gamma: int = 3) -> dict:
    """τ of chain drafting with γ tokens on the held-out replies, and the teacher-forced top-1
    accuracy of each step (acc@j: over drafting positions inside replies whose predicted token
    is a reply token too)."""
    was_training = draft.training
    draft.eval()
    t2d = draft.target_to_draft()
    tokens = rounds = 0
    hits, counts = np.zeros(gamma), np.zeros(gamma)
    for batch, hidden, argmax in held.batches:
        b, t = batch.ids.shape
        rows = _drafting_rows(batch)
        logits = draft.chain_logits(hidden.to(draft.fc.weight.dtype), batch.ids,
                                    batch.lengths, gamma, [rows] * gamma)
        top = t2d[argmax]  # the target's argmax as a draft id, -1 outside the vocabulary
        top = torch.cat([top, top.new_full((b, gamma + 1), -1)], dim=1)
        sup = torch.cat([batch.supervised, batch.supervised.new_zeros((b, gamma + 2))], dim=1)
        correct = torch.zeros((gamma, b, t), dtype=torch.bool)
        for j, step in enumerate(logits):
            label = top[:, 1 + j:1 + j + t][rows]
            right = (step.argmax(-1) == label) & (label >= 0)
            correct[j][rows.cpu()] = right.cpu()
            valid = sup[:, 2 + j:2 + j + t][rows]  # the predicted token is a reply token
            hits[j] += int((right & valid).sum())
            counts[j] += int(valid.sum())
        for i in range(b):
            length = int(batch.lengths[i])
            got, r = replay(correct[:, i, :length].numpy(),
                            batch.supervised[i, :length].cpu().numpy())
            tokens += got
            rounds += r
    draft.train(was_training)
    return {"tau": tokens / max(rounds, 1), "rounds": rounds, "gamma": gamma,
            "acc": [float(h / c) if c else None for h, c in zip(hits, counts, strict=True)]}


@torch.no_grad()
def first_token_outcomes(draft, held: HeldOut) -> list[dict]:
    """Where the chain's first drafted token goes wrong, per held-out example (in order): at the
    positions `chain_tau` scores acc@0 over, how often the draft was right (`right`), how often
    the target's token lies outside the draft vocabulary (`outside`: no draft of that
    vocabulary can propose it) and, of those, how often it already occurred earlier in the
    context, prompt or reply (`outside_in_context`: a copy that only lookup can propose).
    Splits a gap in acc@0 between two datasets into vocabulary and prediction."""
    was_training = draft.training
    draft.eval()
    t2d = draft.target_to_draft()
    outcomes = []
    for batch, hidden, argmax in held.batches:
        b, t = batch.ids.shape
        rows = _drafting_rows(batch)
        (logits,) = draft.chain_logits(hidden.to(draft.fc.weight.dtype), batch.ids,
                                       batch.lengths, 1, [rows])
        pick = torch.full((b, t), -2, dtype=torch.long, device=logits.device)
        pick[rows] = logits.argmax(-1)
        for i in range(b):
            n = int(batch.lengths[i])
            ids, sup = batch.ids[i, :n], batch.supervised[i, :n]
            # draft position p proposes token p+2; the target's is its argmax at row p+1
            m = max(n - 2, 0)
            at = torch.nonzero(rows[i, :m] & sup[2:2 + m]).flatten()
            want = argmax[i, at + 1]
            first = torch.full((len(t2d),), n, dtype=torch.long, device=ids.device)
            first.scatter_reduce_(0, ids, torch.arange(n, device=ids.device), "amin")
            outside = t2d[want] < 0
            outcomes.append({
                "positions": len(at),
                "right": int(((pick[i, at] == t2d[want]) & ~outside).sum()),
                "outside": int(outside.sum()),
                # known to the draft at position p: tokens 0..p+1
                "outside_in_context": int((outside & (first[want] <= at + 1)).sum())})
    draft.train(was_training)
    return outcomes
