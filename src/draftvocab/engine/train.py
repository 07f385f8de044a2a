"""Train an EAGLE-3 draft over a (trimmed) vocabulary with training-time test (TTT).

Owns: conversations -> supervised token batches, the TTT forward and loss (soft targets = the
target's distribution restricted to the draft vocabulary), the AdamW loop with warm-up + cosine
schedule, and resumable checkpoints. It leaves the model to `draft.py` (whose docstring fixes the
position/attention convention followed here) and the target to `target.py`.

Target hidden states are computed on the fly, one forward per batch under no_grad, or read from
a feature cache (`features.py`: fp16, memory-mapped, computed once for many epochs or a sweep).
The draft's LM head runs only at the positions the loss looks at (`ttt_forward(rows=...)`): on
chat data most positions are prompt, and the head is most of a draft step's cost. A held-out
acceptance measure (`acceptance.chain_tau`) can be logged during training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from draftvocab.core.atomic import atomic_directory, atomic_files
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.draft import DraftBase, DraftConfig, Eagle3Draft, write_draft_files

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LOG_NAME = "train_log.json"
DTYPES = ("fp32", "bf16")  # bf16: torch.autocast around the draft
DRAFTERS = ("eagle3", "specblock")
SPECBLOCK_FIELDS = ("drafter", "block_size", "draft_layers", "shift", "inherit", "rank_head",
                    "valid_prefix", "rank_weight")


@dataclass
class TrainConfig:
    """Hyper-parameters; every field that changes the result is checked again on --resume."""

    ttt_steps: int = 7
    step_decay: float = 0.8  # weight of TTT step j is step_decay**j
    lr: float = 3e-4
    warmup_steps: int | None = None  # None: 5% of the optimizer steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 4
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs; data cycles as needed
    max_len: int = 1024
    dtype: str = "fp32"  # fp32 | bf16 (torch.autocast)
    save_every: int = 0  # 0: only the final draft
    seed: int = 0
    # SpecBlock (drafter="specblock"; specblock.py). ttt_steps is EAGLE-3's only.
    drafter: str = "eagle3"  # eagle3 | specblock
    block_size: int = 4
    draft_layers: int = 2
    shift: bool = True
    inherit: bool = True
    rank_head: bool = True
    valid_prefix: bool = True
    rank_weight: float = 1.0

    def check(self) -> None:
        positive = {"ttt_steps": self.ttt_steps, "batch_size": self.batch_size,
                    "epochs": self.epochs, "lr": self.lr}
        bad = [f"{k} must be > 0, got {v}" for k, v in positive.items() if not v > 0]
        if self.max_steps is not None and self.max_steps < 1:
            bad.append(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_len < 3:
            bad.append(f"max_len must be >= 3, got {self.max_len}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            bad.append(f"warmup must be >= 0, got {self.warmup_steps}")
        if self.save_every < 0:
            bad.append(f"save_every must be >= 0, got {self.save_every}")
        if not 0 < self.step_decay <= 1:
            bad.append(f"step_decay must be in (0, 1], got {self.step_decay}")
        if self.drafter not in DRAFTERS:
            bad.append(f"drafter must be one of {', '.join(DRAFTERS)}, got {self.drafter}")
        if self.block_size < 1 or self.draft_layers < 1:
            bad.append("block_size and draft_layers must be >= 1")
        if self.dtype not in DTYPES:
            bad.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype}")
        if bad:
            raise DraftVocabError("; ".join(bad))


@dataclass
class Example:
    """One conversation as tokens: ids and the supervised (assistant) mask, same length."""

    ids: np.ndarray
    supervised: np.ndarray


@dataclass
class Batch:
    ids: torch.Tensor  # int64 [B, T], right-padded
    supervised: torch.Tensor  # bool [B, T]
    lengths: torch.Tensor  # int64 [B]


@dataclass
class TrainResult:
    out: str
    steps: int
    examples: int
    skipped: dict[str, int]
    draft_vocab_size: int
    vocab_size: int
    final_loss: float | None
    final_acc: list[float | None]
    seconds: float
    seconds_per_step: float
    resumed_from: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    heldout: dict | None = None  # the last held-out evaluation (acceptance.chain_tau)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- data --------------------------------------------------------------------------------------


def encode_conversations(conversations: Iterable, tokenizer, max_len: int,
                         template_kwargs: dict | None = None, *, spans=None
                         ) -> tuple[list[Example], dict]:
    """Conversations (`Conversation`s or message lists) -> `Example`s truncated to max_len.

    The supervised tokens are the ones `count` counts (`spans.ChatSpans`, default rule: what
    the target generates, leading assistant turns left out); a conversation whose turns need
    separate texts (reasoning an earlier turn's render drops) gives one example per text.
    Conversations whose spans cannot be located, or with nothing supervised to predict after
    truncation, are skipped and counted by reason.

    >>> examples, skipped = encode_conversations(read_conversations("chats.jsonl"), tok, 1024)
    """
    from draftvocab.chat.spans import ChatSpans, SpanError

    spans = spans or ChatSpans(tokenizer, template_kwargs=template_kwargs)
    examples, skipped = [], {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for conv in conversations:
        messages = getattr(conv, "messages", conv)
        try:
            sequences = spans.supervised_sequences(
                messages, tools=getattr(conv, "tools", None),
                template_kwargs=getattr(conv, "template_kwargs", None))
        except SpanError as exc:
            skip(exc.reason)
            continue
        if not sequences:
            skip("no_prompt")
        kept = 0
        for ids, mask in sequences:
            ids, mask = ids[:max_len], mask[:max_len]
            if mask[2:].any():  # the first label is token 2 (EAGLE alignment)
                examples.append(Example(ids, mask))
                kept += 1
        if sequences and not kept:
            skip("nothing_supervised")
    return examples, skipped


def collate(examples: Sequence[Example], pad_id: int = 0) -> Batch:
    """Right-pad to the longest example (the pad id never reaches the loss)."""
    lengths = [len(e.ids) for e in examples]
    t = max(lengths)
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    supervised = torch.zeros((len(examples), t), dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.from_numpy(e.ids)
        supervised[i, :len(e.ids)] = torch.from_numpy(e.supervised)
    return Batch(ids, supervised, torch.tensor(lengths, dtype=torch.long))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a function of (seed, epoch) only, so resumable."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


# --- the draft -----------------------------------------------------------------------------------


def build_draft(target, d2t: torch.Tensor | None = None, t2d: torch.Tensor | None = None,
                seed: int = 0, config: TrainConfig | None = None) -> DraftBase:
    """A fresh draft for `target`; k = len(d2t), or the full vocabulary without a mapping;
    EAGLE-3 unless `config.drafter` says specblock.

    lm_head starts as the target's LM-head rows of the kept ids and the final norm as the
    target's final norm: the draft's hidden states live in the target's space, so this is a
    good, standard start. Everything else uses PyTorch's default init under `seed`.
    """
    k = int(d2t.numel()) if d2t is not None else target.vocab_size
    dc = DraftConfig.for_target(target, k)
    torch.manual_seed(seed)
    embed = target.model.get_input_embeddings()
    if config is not None and config.drafter == "specblock":
        from draftvocab.engine.specblock import SpecBlockConfig, SpecBlockDraft

        dc = SpecBlockConfig(**asdict(dc), block_size=config.block_size,
                             num_layers=config.draft_layers, shift=config.shift,
                             inherit=config.inherit, rank_head=config.rank_head)
        draft = SpecBlockDraft(dc, embed, d2t, t2d)
    else:
        draft = Eagle3Draft(dc, embed, d2t, t2d)
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


# --- training-time test --------------------------------------------------------------------------


def _shift(x: torch.Tensor, n: int, fill) -> torch.Tensor:
    """x[:, n:] padded back to x's length with `fill` (along dim 1)."""
    if n == 0:
        return x
    pad = x.new_full((x.shape[0], min(n, x.shape[1]), *x.shape[2:]), fill)
    return torch.cat([x[:, n:], pad], dim=1)


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
    1..j's at t itself (draft.py's convention, the same rule as chain drafting).
    """
    b, t = ids.shape
    positions = torch.arange(t, device=ids.device).expand(b, t)
    hidden = draft.fuse(target_hidden)
    past_k = past_v = None
    logits = []
    for j in range(steps):
        select = {} if rows is None else {"rows": rows[j]}
        out, hidden, k, v = draft.step(hidden, _shift(ids, 1 + j, 0), positions + j,
                                       past_k, past_v, ttt_mask(lengths, t, j), **select)
        past_k = k if past_k is None else torch.cat([past_k, k], dim=2)
        past_v = v if past_v is None else torch.cat([past_v, v], dim=2)
        logits.append(out)
    return logits


@dataclass
class TTTTargets:
    """Labels for the TTT steps. Step j at draft position t is scored against row t+1+j of
    `probs` and `argmax`, under `masks[j][:, t]`."""

    probs: torch.Tensor  # [B, T, k]: the target distribution over the kept ids at each position
    argmax: torch.Tensor  # [B, T]: the target's argmax as a draft id, -1 outside the vocabulary
    masks: list[torch.Tensor]  # per step j: bool [B, T] over draft positions t


def ttt_targets(target_logits: torch.Tensor, batch: Batch, t2d: torch.Tensor,
                steps: int) -> TTTTargets:
    """Labels of step j at t: the target distribution at t+1+j over the kept ids (ascending =
    draft id order). Mask: token t+2+j is supervised and inside the sequence, and the target's
    argmax at t+1+j is in the draft vocabulary."""
    t2d = t2d.to(target_logits.device)
    kept = torch.nonzero(t2d).flatten()
    restricted = target_logits if len(kept) == len(t2d) else target_logits[..., kept]
    return kept_targets(restricted, target_logits.argmax(-1), batch, t2d, steps)


def kept_targets(kept_logits: torch.Tensor, argmax: torch.Tensor, batch: Batch,
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
        masks.append(_shift(batch.supervised, 2 + j, False) & inside
                     & (_shift(top, 1 + j, -1) >= 0))
    return TTTTargets(probs, top, masks)


def ttt_loss(step_logits: list[torch.Tensor], labels: TTTTargets, step_decay: float
             ) -> tuple[torch.Tensor, list[float], list[int], list[int]]:
    """Sum over steps of step_decay**j * the masked mean soft cross-entropy (= KL to the
    target's restricted distribution up to a constant). Step logits are [B, T, k], or [n_j, k]
    at the positions of `labels.masks[j]` (`ttt_forward(..., rows=labels.masks)`).

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


# --- schedule, checkpoints -----------------------------------------------------------------------


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
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


def _fingerprint(examples: Sequence[Example], d2t: torch.Tensor) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(e.ids.tobytes())
        h.update(e.supervised.tobytes())
    h.update(d2t.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: Path, draft: DraftBase, opt: torch.optim.Optimizer,
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


def _load_checkpoint(path: Path, draft: DraftBase, opt: torch.optim.Optimizer
                     ) -> dict[str, Any]:
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


# --- the loop ------------------------------------------------------------------------------------


def _label_steps(config: TrainConfig) -> int:
    """Label rows needed: TTT steps, or two SpecBlock blocks (block 2 reaches row 2K-1)."""
    return config.ttt_steps if config.drafter == "eagle3" else 2 * config.block_size


def _objective(draft, hidden, batch, labels, config: TrainConfig, step: int, autocast
               ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The drafter's forward + loss; returns the loss and its log fields."""
    if config.drafter == "specblock":
        from draftvocab.engine.specblock import block_forward, block_loss

        j = step % config.block_size  # block 2's anchor row: every row in turn, resumable
        with autocast:
            rows = block_forward(draft, hidden, batch.ids, batch.lengths, j)
        loss, fields = block_loss(draft, rows, labels, batch, step_decay=config.step_decay,
                                  valid_prefix=config.valid_prefix,
                                  rank_weight=config.rank_weight, inherit_from=j)
        return loss, {**fields, "inherit_from": j}
    with autocast:
        step_logits = ttt_forward(draft, hidden, batch.ids, batch.lengths, config.ttt_steps,
                                  rows=labels.masks)
    loss, losses, correct, counted = ttt_loss(step_logits, labels, config.step_decay)
    return loss, {"step_loss": losses, "positions": counted[0],
                  "acc": [c / n if n else None for c, n in zip(correct, counted, strict=True)]}

Progress = Callable[[int, int, dict[str, Any]], None]


def train_draft(target, examples: Sequence[Example], out: str | os.PathLike, *,
                d2t: torch.Tensor | None = None, t2d: torch.Tensor | None = None,
                config: TrainConfig | None = None, resume: bool = False,
                skipped: dict[str, int] | None = None,
                progress: Progress | None = None, features=None,
                heldout: Callable[[DraftBase], dict] | None = None,
                eval_every: int | None = None) -> TrainResult:
    """Train a draft on `examples` and write it to `out/` (config.json + model.safetensors),
    with `out/train_log.json` and, every `save_every` steps, `out/checkpoint-<step>/`.

    `resume=True` continues from the latest checkpoint (same data, mapping and config) and
    ends with the same weights as an uninterrupted run. `features` (features.FeatureCache of
    these examples) replaces the target forward of each step by cached fp16 features;
    `heldout(draft)` (e.g. acceptance.chain_tau on held-out replies) is called before the
    first step, every `eval_every` steps (default: ten times a run) and at the end; its results are logged under "eval"
    with the step and the supervised tokens trained on.

    >>> examples, _ = encode_conversations(read_conversations("chats.jsonl"), target.tokenizer,
    ...                                    1024)
    >>> train_draft(target, examples, "draft/", config=TrainConfig(max_steps=1000))
    """
    config = config or TrainConfig()
    config.check()
    if not examples:
        raise DraftVocabError("no training examples (every conversation was skipped)")
    out = Path(out)
    draft = build_draft(target, d2t, t2d, seed=config.seed, config=config)
    batches_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = config.max_steps or config.epochs * batches_per_epoch
    eval_every = eval_every or max(1, total // 10)
    warmup = (config.warmup_steps if config.warmup_steps is not None
              else max(1, round(0.05 * total)))
    opt = torch.optim.AdamW(draft.parameters(), lr=config.lr, betas=(0.9, 0.95),
                            weight_decay=config.weight_decay)
    fingerprint = _fingerprint(examples, draft.d2t)
    # Everything the result depends on; a resumed run must match it exactly.
    identity = {**asdict(config), "save_every": None, "total_steps": total, "warmup": warmup,
                "data": fingerprint, "examples": len(examples)}
    if features is not None:  # fp16 features: not bitwise the run without them
        if len(features) != len(examples):
            raise DraftVocabError("the feature cache does not hold these examples")
        identity["features"] = "fp16-cache"
    if config.drafter == "eagle3":  # checkpoints from before SpecBlock existed still resume
        for name in SPECBLOCK_FIELDS:
            identity.pop(name)
    step, log, evals, resumed_from = 0, [], [], None
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not resume:
        raise DraftVocabError(f"{out} already holds checkpoints ({checkpoint.name}); pass "
                              "--resume to continue, or choose another --out")
    if resume and checkpoint is not None:
        state = _load_checkpoint(checkpoint, draft, opt)
        differ = sorted(k for k, v in identity.items() if state["identity"].get(k) != v)
        if differ:
            diffs = ", ".join(f"{k} {state['identity'].get(k)!r} -> {identity[k]!r}"
                              for k in differ)
            raise DraftVocabError(f"cannot resume from {checkpoint}: the run changed ({diffs})")
        step, log, resumed_from = state["step"], state["log"], str(checkpoint)
        evals = state.get("eval", [])

    t2d_dev = draft.t2d
    kept = torch.nonzero(t2d_dev).flatten()
    pad_id = 0
    trained_tokens = log[-1].get("tokens", 0) if log else 0

    def evaluate() -> None:
        if heldout is not None and not (evals and evals[-1]["step"] == step):
            evals.append({"step": step, "tokens": trained_tokens, **heldout(draft)})

    autocast = torch.autocast(target.device.type, dtype=torch.bfloat16,
                              enabled=config.dtype == "bf16")
    checkpoints = []
    start = time.perf_counter()
    done_here = 0
    draft.train()
    if step == 0:
        evaluate()
    while step < total:
        epoch, index = divmod(step, batches_per_epoch)
        order = epoch_order(len(examples), config.seed, epoch)
        picked = order[index * config.batch_size:(index + 1) * config.batch_size]
        batch = collate([examples[i] for i in picked], pad_id)
        batch = Batch(batch.ids.to(target.device), batch.supervised.to(target.device),
                      batch.lengths.to(target.device))
        t0 = time.perf_counter()
        if features is not None:
            from draftvocab.engine.features import kept_logits

            hidden, final, argmax = features.batch(picked, batch.ids.shape[1], target.device)
            labels = kept_targets(kept_logits(target, final, kept), argmax, batch, t2d_dev,
                                  _label_steps(config))
            del final
        else:
            target_out = target.forward(batch.ids, use_cache=False)
            labels = ttt_targets(target_out.logits, batch, t2d_dev, _label_steps(config))
            hidden = target_out.hidden.float()
            del target_out
        lr = lr_at(step, total, warmup, config.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, fields = _objective(draft, hidden, batch, labels, config, step, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(draft.parameters(), config.grad_clip)
        opt.step()
        step += 1
        done_here += 1
        trained_tokens += int(batch.supervised.sum())
        entry = {"step": step, "epoch": epoch, "lr": lr, "loss": float(loss.detach()),
                 **fields, "grad_norm": float(grad_norm), "seconds": time.perf_counter() - t0,
                 "tokens": trained_tokens}
        log.append(entry)
        if heldout is not None and step % eval_every == 0:
            evaluate()
            entry["eval"] = evals[-1]
        if config.save_every and step % config.save_every == 0 and step < total:
            path = save_checkpoint(out / f"checkpoint-{step}", draft, opt,
                                   {"step": step, "identity": identity, "log": log,
                                    "eval": evals})
            checkpoints.append(str(path))
        if progress is not None:
            progress(step, total, entry)

    evaluate()
    # The final draft and its log go in together, as the last step of the run.
    with atomic_files(out) as stage:
        write_draft_files(draft.eval(), stage)
        (stage / LOG_NAME).write_text(json.dumps({"config": asdict(config), "total_steps": total,
                                                  "warmup": warmup, "steps": log,
                                                  "eval": evals}, indent=1))
        if evals:
            from draftvocab.analysis.plots import plot_training

            plot_training(log, evals, stage / "training.png")
    seconds = time.perf_counter() - start
    last = log[-1] if log else {}
    return TrainResult(
        out=str(out), steps=step, examples=len(examples), skipped=dict(skipped or {}),
        draft_vocab_size=draft.config.draft_vocab_size, vocab_size=draft.config.vocab_size,
        final_loss=last.get("loss"), final_acc=last.get("acc", []), seconds=seconds,
        seconds_per_step=seconds / max(done_here, 1), resumed_from=resumed_from,
        checkpoints=checkpoints, heldout=evals[-1] if evals else None)


def mapping_tensors(m, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d2t/t2d tensors of a loaded VocabMapping, checked against the target's V."""
    if m.vocab_size != vocab_size:
        raise DraftVocabError(f"the mapping is for V={m.vocab_size:,} but the target's "
                              f"vocab_size is {vocab_size:,}")
    return torch.from_numpy(m.d2t.astype(np.int64)), torch.from_numpy(m.t2d.astype(bool))