"""SpecBlock (arXiv 2605.07243): a drafter that emits K dependent positions per forward.

A *block* anchored at a position whose hidden state h and next token x are known predicts the
K tokens after x in one forward. Row 0 of the block is an ordinary EAGLE-3 row (fused target
feature or inherited hidden state, with x's embedding); rows 1..K-1 carry the same hidden state
but a learned per-position query in place of a token embedding (their tokens are not known yet).
The switches in `SpecBlockConfig`, each off-able for ablation:

- `shift` (layer-wise shift): before every decoder layer, row k adds a learned projection of
  row k-1's previous-layer hidden state, so later rows see the path drafted before them.
- `inherit` (cross-block inheritance): a new block anchored at row j of the previous block
  starts from row j's output hidden state (with the token drafted there); off, it restarts
  from the anchor's fused target feature, as a drafter without inheritance must.
- `rank_head`: a small head on the detached hidden state plus the top-10 log-probs predicts the
  rank class of the correct token (1 / 2-4 / 5-10 / >10); the drafting policy in
  `blockdecode.py` continues, branches or terminates on it.
- `valid_prefix` (a training switch, `TrainConfig.valid_prefix`): the loss at a later row is
  dropped once an earlier row of the path is wrong, as that prefix is never verified.

Attention inside a block is causal over its rows; a block sees the accepted context (real
rows, cached per layer) and the rows of its ancestor blocks up to its anchor. Row k of a block
whose row 0 sits at rotary position p uses position p + k and predicts the token p + k + 2
(EAGLE's alignment, base.py). Every layer reads [norm(embedding or query) ; norm(hidden)] as
the EAGLE-3 layer does. The fc fusion, norm, LM head over the trimmed vocabulary and d2t/t2d
are as in EAGLE-3 (base.py); the checkpoint is config.json (`"drafter": "specblock"`) +
model.safetensors, which SpecForge/SGLang do not serve.

Owns the model, its training forward and loss (`block_forward`, `block_loss`); decoding is
`blockdecode.SpecBlockDecoder`'s, the training loop `train.py`'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.blockdecode import SpecBlockDecoder
from draftvocab.engine.drafters.base import DraftConfig, Drafter, shift_left
from draftvocab.engine.drafters.layers import MidLayer, RMSNorm

ARCHITECTURE = "SpecBlockDraft"
RANK_CLASSES = ("1", "2-4", "5-10", ">10")
RANK_EDGES = (1, 4, 10)  # upper rank of classes 0..2; beyond: class 3


@dataclass
class SpecBlockConfig(DraftConfig):
    kind = "specblock"

    block_size: int = 4  # K rows per forward
    num_layers: int = 2
    shift: bool = True
    inherit: bool = True
    rank_head: bool = True
    rank_features: int = 10  # top log-probs fed to the rank head
    rank_hidden: int = 64

    def to_hf(self) -> dict[str, Any]:
        d = super().to_hf()
        d.update(architectures=[ARCHITECTURE], drafter=self.kind,
                 num_hidden_layers=self.num_layers)
        return d

    def check_servable(self, what: str) -> None:
        raise DraftVocabError(f"{what} needs an EAGLE-3 draft; this is a SpecBlock draft, which "
                              "only draftvocab's own decoder runs")


def rank_class(rank: torch.Tensor) -> torch.Tensor:
    """1-based rank -> class index (0: rank 1, 1: 2-4, 2: 5-10, 3: > 10)."""
    return torch.bucketize(rank, torch.tensor(RANK_EDGES, device=rank.device))


class SpecBlockDraft(Drafter):
    """The SpecBlock drafter; `run()` pushes rows through every layer (see module docstring)."""

    config_class = SpecBlockConfig
    layer_prefix = "layers."
    title = "a SpecBlock"
    proposes = "block"

    def __init__(self, config: SpecBlockConfig, embed_tokens: nn.Embedding,
                 d2t: torch.Tensor | None = None, t2d: torch.Tensor | None = None):
        super().__init__(config, embed_tokens, d2t, t2d)
        c = config
        if c.block_size < 1 or c.num_layers < 1:
            raise DraftVocabError("SpecBlock needs block_size >= 1 and num_layers >= 1")
        self.queries = nn.Parameter(torch.randn(max(c.block_size - 1, 0), c.hidden_size) * 0.02)
        self.layers = nn.ModuleList(MidLayer(c) for _ in range(c.num_layers))
        if c.shift:
            self.shifts = nn.ModuleList(nn.Linear(c.hidden_size, c.hidden_size, bias=False)
                                        for _ in range(c.num_layers))
            for lin in self.shifts:  # starts as "no shift"; learns how much of the path to use
                nn.init.zeros_(lin.weight)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.draft_vocab_size, bias=False)
        if c.rank_head:
            self.rank_head = nn.Sequential(
                nn.Linear(c.hidden_size + c.rank_features, c.rank_hidden), nn.SiLU(),
                nn.Linear(c.rank_hidden, len(RANK_CLASSES)))

    def embed(self, ids: torch.Tensor, dtype) -> torch.Tensor:
        with torch.no_grad():
            return self.embed_tokens(ids).to(dtype)

    def query(self, k: int, shape: tuple[int, ...]) -> torch.Tensor:
        """The learned input of block row k >= 1, broadcast to shape + (hidden,)."""
        return self.queries[k - 1].expand(*shape, -1)

    def run(self, hidden, embeds, positions, src, past=None, mask=None):
        """Rows [B, R, d] (hidden, embeds), rotary `positions` [B, R], `src` int64[R]: the row of
        each row's predecessor in its block (-1 for row 0), `past`: per layer (k, v) of earlier
        rows or None, `mask` bool [B|1, 1, R, S+R]. Returns the last layer's output [B, R, d]
        (pre-norm) and these rows' per-layer (k, v)."""
        x = hidden
        kvs = []
        shifts = getattr(self, "shifts", None)
        for i, layer in enumerate(self.layers):
            if shifts is not None:
                prev = F.pad(x, (0, 0, 1, 0))[:, src + 1]  # row -1 -> the zero pad row
                x = x + shifts[i](prev)
            pk, pv = past[i] if past is not None else (None, None)
            x, k, v = layer(embeds, x, positions, pk, pv, mask)
            kvs.append((k, v))
        return x, kvs

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h))

    def rank_logits(self, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Rank-class logits [..., 4] from detached features: trained beside the drafter, it
        never changes what the drafter predicts."""
        n = min(self.config.rank_features, logits.shape[-1])
        top = torch.log_softmax(logits.detach().float(), -1).topk(n, dim=-1).values
        if n < self.config.rank_features:
            top = F.pad(top, (0, self.config.rank_features - n), value=-30.0)
        feats = torch.cat([self.norm(h.detach()).float(), top], dim=-1)
        return self.rank_head(feats.to(self.rank_head[0].weight.dtype))

    # -- the drafter protocol -------------------------------------------------------------------

    @classmethod
    def configure(cls, base: DraftConfig, train) -> SpecBlockConfig:
        return SpecBlockConfig(**asdict(base), block_size=train.block_size,
                               num_layers=train.draft_layers, shift=train.shift,
                               inherit=train.inherit, rank_head=train.rank_head)

    def label_steps(self, train) -> int:
        return 2 * self.config.block_size  # two blocks: block 2 reaches row 2K-1

    def training_loss(self, target_hidden, batch, labels, train, step: int, autocast
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
        j = step % self.config.block_size  # block 2's anchor row: every row in turn, resumable
        with autocast:
            rows = block_forward(self, target_hidden, batch.ids, batch.lengths, j)
        loss, fields = block_loss(self, rows, labels, batch, step_decay=train.step_decay,
                                  valid_prefix=train.valid_prefix,
                                  rank_weight=train.rank_weight, inherit_from=j)
        return loss, {**fields, "inherit_from": j}

    def chain_logits(self, target_hidden, ids, lengths, steps: int, rows):
        # chain drafting is block 1, then block 2 anchored at its last row and fed the token
        # drafted there (the real one whenever the chain so far was accepted)
        k = self.config.block_size
        if steps > 2 * k:
            raise DraftVocabError(f"a SpecBlock draft replays chains of at most two blocks "
                                  f"(2K = {2 * k} tokens), not {steps}")
        out = block_forward(self, target_hidden, ids, lengths, k - 1 if steps > k else None)
        return [logits[rows[j]] for j, (_, logits, _) in enumerate(out[:steps])]

    def decoder(self, target, options) -> SpecBlockDecoder:
        """Policy "chain" when `options.tree` is off, else "rank" if it has a rank head, else
        "fixed" (unless `options.policy` says)."""
        if options.adaptive:
            raise DraftVocabError("an adaptive chain length is for EAGLE-3 drafts; a SpecBlock "
                                  "draft adapts its budget with --bandit")
        policy = options.policy
        if policy is None:
            policy = ("chain" if not options.tree else
                      "rank" if getattr(self, "rank_head", None) is not None else "fixed")
        return SpecBlockDecoder(target, self, blocks=options.blocks, width=options.width,
                                branch=options.branch, policy=policy,
                                total_tokens=options.total_tokens, bandit=options.bandit)


# --- training ------------------------------------------------------------------------------------


def block_masks(lengths: torch.Tensor, t: int, k: int, inherit_from: int | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training masks. Rows are stream-major: row (s, t) = block row s anchored at t.

    Block 1 [B, 1, kT, kT]: stream 0 (the real rows) is causal over real rows; stream s >= 1 at
    t sees real rows <= t and streams 1..s at t. Block 2 (anchored at block-1 row j =
    `inherit_from`) [B, 1, kT, 2kT]: real rows <= t, block-1 streams 1..j at t, its own streams
    0..s at t."""
    dev = lengths.device
    pos = torch.arange(t, device=dev)
    causal = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] + 1 < lengths[:, None,
                                                                                      None])
    eye = torch.eye(t, dtype=torch.bool, device=dev).expand(len(lengths), t, t)
    zero = torch.zeros_like(eye)

    def rows(cols):
        return torch.cat(cols, dim=2)

    first = torch.cat([rows([causal] + [eye if 1 <= c <= s else zero for c in range(1, k)])
                       for s in range(k)], dim=1)[:, None]
    if inherit_from is None:
        return first, None
    j = inherit_from
    old = [causal] + [eye if c <= j else zero for c in range(1, k)]
    second = torch.cat([rows(old + [eye if c <= s else zero for c in range(k)])
                        for s in range(k)], dim=1)[:, None]
    return first, second


def block_forward(draft: SpecBlockDraft, target_hidden: torch.Tensor, ids: torch.Tensor,
                  lengths: torch.Tensor, inherit_from: int | None
                  ) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Training forward of every anchor at once: block 1 at each position t, then (when
    `inherit_from` = j is given) block 2 anchored at block-1 row j, teacher-forced with the
    true token there. Returns (label index, logits [B, T, k], output hidden [B, T, d]) per
    block row; label index s means "predicts token t + 2 + s" (ttt_targets' step s)."""
    c = draft.config
    k = c.block_size
    b, t = ids.shape
    dev = ids.device
    fused = draft.fuse(target_hidden)
    pos = torch.arange(t, device=dev).expand(b, t)
    src = torch.cat([torch.full((t,), -1, device=dev, dtype=torch.long)]
                    + [torch.arange(t, device=dev) + (s - 1) * t for s in range(1, k)])
    m1, m2 = block_masks(lengths, t, k, inherit_from)

    def block(h0, first_ids, start, past, mask):
        embeds = torch.cat([draft.embed(first_ids, h0.dtype)]
                           + [draft.query(s, (b, t)).to(h0.dtype) for s in range(1, k)], dim=1)
        positions = torch.cat([pos + start + s for s in range(k)], dim=1)
        return draft.run(h0.repeat(1, k, 1), embeds, positions, src, past, mask)

    out1, kv1 = block(fused, shift_left(ids, 1, 0), 0, None, m1)
    outs = [(s, out1[:, s * t:(s + 1) * t]) for s in range(k)]
    if inherit_from is not None:
        j = inherit_from
        h0 = outs[j][1] if c.inherit else fused
        out2, _ = block(h0, shift_left(ids, 2 + j, 0), 1 + j, kv1, m2)
        outs += [(j + 1 + s, out2[:, s * t:(s + 1) * t]) for s in range(k)]
    return [(s, draft.logits(h), h) for s, h in outs]


def block_loss(draft: SpecBlockDraft, rows, labels, batch, *, step_decay: float,
               valid_prefix: bool, rank_weight: float, inherit_from: int | None
               ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Soft cross-entropy per block row (weight step_decay**s, as TTT), masked by the
    valid-prefix rule, plus the rank head's cross-entropy on the rank class of the target's
    token. Returns the loss and log fields (per-row loss and top-1 accuracy over the plain
    mask, the share of positions the valid-prefix mask kept, rank-head accuracy)."""
    k = draft.config.block_size
    b, t = batch.ids.shape
    dev = batch.ids.device
    pos = torch.arange(t, device=dev)
    total = rows[0][1].new_zeros((), dtype=torch.float32)
    rank_total = total.clone()
    log: dict[str, list] = {"step_loss": [], "acc": [], "acc2": [], "kept": []}
    rank_hits = rank_n = 0
    path_ok = torch.ones(b, t, dtype=torch.bool, device=dev)  # all earlier rows were right
    for i, (s, logits, h) in enumerate(rows):
        if i == k:  # block 2 extends block-1 rows 0..j: right only if all of those were
            path_ok = _prefix_ok(rows[:k], labels, t)[inherit_from]
        n_pos = t - 1 - s
        if n_pos <= 0:
            log["step_loss"].append(0.0)
            log["kept"].append(None)
            (log["acc"] if i < k else log["acc2"]).append(None)
            continue
        plain = labels.masks[s].clone()
        plain[:, n_pos:] = False
        inside = (pos[None, :] + 2 + s < batch.lengths[:, None]) & shift_left(batch.supervised,
                                                                               2 + s, False)
        inside[:, n_pos:] = False
        mask = plain & path_ok if valid_prefix else plain
        logp = F.log_softmax(logits[:, :n_pos].float(), dim=-1)
        ce = -(labels.probs[:, 1 + s:] * logp).sum(-1)
        n = int(mask[:, :n_pos].sum())
        if n:
            row_loss = (ce * mask[:, :n_pos]).sum() / n
            total = total + step_decay**s * row_loss
            log["step_loss"].append(float(row_loss.detach()))
        else:
            log["step_loss"].append(0.0)
        want = labels.argmax[:, 1 + s:]
        pred = logits[:, :n_pos].detach().argmax(-1)
        right = torch.zeros(b, t, dtype=torch.bool, device=dev)
        right[:, :n_pos] = pred == want
        counted = int(plain.sum())
        (log["acc"] if i < k else log["acc2"]).append(
            int((right & plain).sum()) / counted if counted else None)
        log["kept"].append(n / counted if counted else None)
        if getattr(draft, "rank_head", None) is not None:
            rmask = (inside & path_ok) if valid_prefix else inside
            if rmask.any():
                lg = logits[:, :n_pos].detach()
                safe = want.clamp_min(0)
                correct_logit = lg.gather(-1, safe[..., None])
                rank = (lg > correct_logit).sum(-1) + 1
                cls = torch.where(want >= 0, rank_class(rank), len(RANK_CLASSES) - 1)
                rl = draft.rank_logits(h[:, :n_pos], logits[:, :n_pos])
                sel = rmask[:, :n_pos]
                rank_total = rank_total + F.cross_entropy(rl[sel].float(), cls[sel],
                                                          reduction="sum")
                rank_hits += int((rl[sel].argmax(-1) == cls[sel]).sum())
                rank_n += int(sel.sum())
        path_ok = path_ok & right
    if rank_n:
        total = total + rank_weight * rank_total / rank_n
    log["rank_acc"] = rank_hits / rank_n if rank_n else None
    return total, log


def _prefix_ok(rows, labels, t: int) -> list[torch.Tensor]:
    """ok[j] [B, T]: block-1 rows 0..j all predict the target's token (what block 2 anchored at
    row j extends)."""
    out = []
    ok = None
    for s, logits, _ in rows:
        n_pos = t - 1 - s
        right = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        if n_pos > 0:
            right[:, :n_pos] = logits[:, :n_pos].detach().argmax(-1) == labels.argmax[:, 1 + s:]
        ok = right if ok is None else ok & right
        out.append(ok)
    return out
