"""Probe: can a trimmed draft propose the context's tokens that lie outside its vocabulary?

On Spec-Bench 17 % of the target's next tokens are outside the 6,862-token vocabulary, and most
of those already occurred in the prompt (`vocab_gap.py`): names, numbers, foreign words the
answer copies. Here the draft's LM head gets one extra row per such context token — the
target's own LM-head row, so no vocabulary is stored — and acc@0 is replayed with the draft free
to pick them (issue 15, fifteenth pass). Ways:

  none       no context rows (with --steps: the fine-tuning alone, the control)
  untrained  the target's rows as they are
  mapped     the target's rows through the least-squares map onto the trained draft head
  frozen     the head reset to the target's rows and frozen, fine-tuned without context rows
  frozen+context   the same, with context rows in the loss (the target's distribution over
                   the vocabulary and the context tokens seen so far)
  mapped+context   the trained head kept, context rows through the (trained) map

    python benchmarks/context_rows.py runs/fresh12/draft --way mapped+context --steps 300 \\
        --data runs/fresh12/regen.jsonl --features runs/fresh12/features \\
        runs/sb_regen.jsonl=../shared/data/spec_bench_questions.jsonl \\
        runs/speedup-10/heldout.jsonl=runs/speedup-10/prompts.jsonl

Training is TTT step 0 only (acc@0 is what is measured), batch 4, cosine learning rate.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from vocab_gap import categories, groups, replayed

from draftvocab.chat.conversations import read_conversations
from draftvocab.chat.spans import ChatSpans
from draftvocab.engine.drafters import load_draft
from draftvocab.engine.drafters.base import shift_left
from draftvocab.engine.drafters.eagle3 import ttt_mask
from draftvocab.engine.features import open_features
from draftvocab.engine.target import load_target
from draftvocab.engine.train import collate, encode_conversations

WAYS = ("none", "untrained", "mapped", "frozen", "frozen+context", "mapped+context")


class ContextRows:
    """The draft with one extra LM-head row per context token outside its vocabulary."""

    def __init__(self, target, draft, way: str):
        self.draft, self.tokenizer = draft, target.tokenizer
        self.head = target.model.get_output_embeddings().weight.detach().float()
        self.kept = draft.to_target_ids(torch.arange(draft.config.draft_vocab_size))
        self.t2d = draft.target_to_draft()
        self.context = way not in ("none", "frozen")
        self.map = None
        if way.startswith("frozen"):
            draft.lm_head.weight.data.copy_(self.head[self.kept])
            draft.lm_head.weight.requires_grad_(False)
        if way.startswith("mapped"):  # target rows -> the trained head's space
            solution = torch.linalg.lstsq(self.head[self.kept], draft.lm_head.weight.detach())
            self.map = torch.nn.Parameter(solution.solution)

    def parameters(self) -> list[torch.Tensor]:
        own = [p for n, p in self.draft.named_parameters()
               if p.requires_grad and "embed" not in n]
        return own + ([self.map] if self.map is not None else [])

    def extra(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per sequence the context tokens outside the vocabulary [B, E] and which draft
        positions know them [B, T, E] (position t knows tokens 0..t+1)."""
        firsts = []
        for row, n in zip(ids, lengths.tolist(), strict=True):
            first: dict[int, int] = {}
            for p, x in enumerate(row[:n].tolist()):
                if x not in first and int(self.t2d[x]) < 0:
                    first[x] = p
            firsts.append(first)
        e = max([len(f) for f in firsts] + [1])
        extra = torch.zeros(len(ids), e, dtype=torch.long)
        seen_at = torch.full((len(ids), e), 1 << 30)
        for i, first in enumerate(firsts):
            if first:
                extra[i, :len(first)] = torch.tensor(list(first))
                seen_at[i, :len(first)] = torch.tensor(list(first.values()))
        known = seen_at[:, None, :] <= torch.arange(ids.shape[1])[None, :, None] + 1
        return extra, known

    def rows(self, extra: torch.Tensor) -> torch.Tensor:
        rows = self.head[extra]
        return rows if self.map is None else rows @ self.map

    def logits(self, hidden, ids, lengths):
        """Draft logits over the vocabulary then the context rows [B, T, k + E] (masked where
        unknown), the context ids [B, E] and the mask [B, T, E]."""
        d, t = self.draft, ids.shape[1]
        pos = torch.arange(t).expand(ids.shape[0], t)
        logits, h, _, _ = d.step(d.fuse(hidden), shift_left(ids, 1, 0), pos, None, None,
                                 ttt_mask(lengths, t, 0))
        if not self.context:
            return logits, None, None
        extra, known = self.extra(ids, lengths)
        more = torch.einsum("btd,bed->bte", d.norm(h), self.rows(extra))
        return torch.cat([logits, more.masked_fill(~known, -1e9)], -1), extra, known

    def pick(self, logits, extra) -> torch.Tensor:
        """Target id of each position's argmax."""
        top = logits.argmax(-1)
        k = len(self.kept)
        ids = self.kept[top.clamp(max=k - 1)]
        if extra is None:
            return ids
        return torch.where(top >= k, torch.gather(extra, 1, (top - k).clamp(min=0)), ids)


def train(rows: ContextRows, data: Path, features: Path, steps: int, lr: float, seed: int):
    tok = rows.tokenizer
    examples, _ = encode_conversations(read_conversations(data), tok, 1024,
                                       spans=ChatSpans(tok))
    cache = open_features(features)
    if len(cache) != len(examples):
        raise SystemExit(f"{features} holds {len(cache)} examples, {data} gives {len(examples)}")
    params = rows.parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rows.draft.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step
                                                                                 / steps))
        picked = [order[(step * 4 + i) % len(order)] for i in range(4)]
        batch = collate([examples[i] for i in picked])
        t = batch.ids.shape[1]
        hidden, final, argmax = cache.batch(picked, t)
        logits, extra, known = rows.logits(hidden, batch.ids, batch.lengths)
        state, want = shift_left(final, 1, 0.0), shift_left(argmax, 1, 0)  # the label row t+1
        label = state @ rows.head[rows.kept].T
        reachable = rows.t2d[want] >= 0
        if extra is not None:
            more = torch.einsum("btd,bed->bte", state, rows.head[extra])
            label = torch.cat([label, more.masked_fill(~known, -1e9)], -1)
            reachable |= ((extra[:, None, :] == want[:, :, None]) & known).any(-1)
        inside = torch.arange(t)[None] + 2 < batch.lengths[:, None]
        mask = shift_left(batch.supervised, 2, False) & inside & reachable
        loss = -(torch.softmax(label[mask], -1) * F.log_softmax(logits[mask], -1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    rows.draft.eval()


@torch.no_grad()
def acc0(target, rows: ContextRows, replies: Path, named: dict[str, str]) -> dict[str, float]:
    chats, held = replayed(target, replies)
    counts: dict[str, list[int]] = {}
    at = 0
    for batch, hidden, argmax in held.batches:
        t = batch.ids.shape[1]
        logits, extra, _ = rows.logits(hidden, batch.ids, batch.lengths)
        right = rows.pick(logits, extra) == shift_left(argmax, 1, -1)
        inside = torch.arange(t)[None] + 2 < batch.lengths[:, None]
        scored = (shift_left(batch.supervised, 1, False) & shift_left(batch.supervised, 2, False)
                  & inside)
        for i in range(len(batch.ids)):
            for name in groups(chats[at + i], named):
                c = counts.setdefault(name, [0, 0])
                c[0] += int(right[i][scored[i]].sum())
                c[1] += int(scored[i].sum())
        at += len(batch.ids)
    return {name: hits / n for name, (hits, n) in sorted(counts.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("draft", type=Path)
    ap.add_argument("datasets", nargs="+", help="REPLIES.jsonl[=CATEGORIES.jsonl] to replay")
    ap.add_argument("--way", choices=WAYS, default="untrained")
    ap.add_argument("--steps", type=int, default=0, help="fine-tuning steps before the replay")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--data", type=Path, help="regenerated JSONL the feature cache was built on")
    ap.add_argument("--features", type=Path, help="its feature cache (`train --cache-features`)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.steps and not (args.data and args.features):
        ap.error("--steps needs --data and --features")
    torch.manual_seed(args.seed)
    target = load_target("smollm2-135m")
    rows = ContextRows(target, load_draft(args.draft, target, dtype=torch.float32), args.way)
    if args.steps:
        train(rows, args.data, args.features, args.steps, args.lr, args.seed)
    result = {"way": args.way, "steps": args.steps, "lr": args.lr}
    for item in args.datasets:
        replies, _, named = item.partition("=")
        result[replies] = acc0(target, rows, Path(replies),
                               categories(Path(named) if named else None))
        print(replies, json.dumps({k: round(v, 4) for k, v in result[replies].items()}),
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
