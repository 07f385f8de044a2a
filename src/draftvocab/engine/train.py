"""Train a draft (any drafter: EAGLE-3, SpecBlock) over a (trimmed) vocabulary.

Owns: conversations -> supervised token batches, their labels (soft targets = the target's
distribution restricted to the draft vocabulary, per step ahead), the AdamW loop with warm-up
+ cosine schedule, resuming, logging and held-out evaluation. It leaves the model, its forward
and loss to the drafter (`drafters/`: `Drafter.training_loss`), the checkpoint files to
`checkpoints.py` and the target to `target.py`.

Target hidden states are computed on the fly, one forward per batch under no_grad, or read from
a feature cache (`features.py`: fp16, memory-mapped, computed once for many epochs or a sweep).
The draft's LM head runs only at the positions the loss looks at (`eagle3.ttt_forward(rows=...)`):
on chat data most positions are prompt, and the head is most of a draft step's cost. A held-out
acceptance measure (`acceptance.chain_tau`) can be logged during training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from draftvocab.core.assets import sha256_file
from draftvocab.core.atomic import atomic_files
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from draftvocab.engine.drafters import DRAFTERS, build_draft
from draftvocab.engine.drafters.base import Drafter, write_draft_files
from draftvocab.engine.labels import kept_targets, ttt_targets

LOG_NAME = "train_log.json"
DTYPES = ("fp32", "bf16")  # bf16: torch.autocast around the draft


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
    # SpecBlock (drafter="specblock"; drafters/specblock.py). ttt_steps is EAGLE-3's only.
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


# --- schedule ----------------------------------------------------------------------------------


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _fingerprint(examples: Sequence[Example], d2t: torch.Tensor) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(e.ids.tobytes())
        h.update(e.supervised.tobytes())
    h.update(d2t.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# --- the loop ------------------------------------------------------------------------------------


Progress = Callable[[int, int, dict[str, Any]], None]


def train_draft(target, examples: Sequence[Example], out: str | os.PathLike, *,
                d2t: torch.Tensor | None = None, t2d: torch.Tensor | None = None,
                config: TrainConfig | None = None, resume: bool = False,
                skipped: dict[str, int] | None = None,
                progress: Progress | None = None, features=None,
                heldout: Callable[[Drafter], dict] | None = None,
                eval_every: int | None = None,
                init_from: str | os.PathLike | None = None) -> TrainResult:
    """Train a draft on `examples` and write it to `out/` (config.json + model.safetensors),
    with `out/train_log.json` and, every `save_every` steps, `out/checkpoint-<step>/`.

    `resume=True` continues from the latest checkpoint (same data, mapping and config) and
    ends with the same weights as an uninterrupted run. `features` (features.FeatureCache of
    these examples) replaces the target forward of each step by cached fp16 features;
    `heldout(draft)` (e.g. acceptance.chain_tau on held-out replies) is called before the
    first step, every `eval_every` steps (default: ten times a run) and at the end; its results are logged under "eval"
    with the step and the supervised tokens trained on. `init_from` (a finished draft of the
    same shape; its mapping may differ, `warm_start`) starts from its weights instead of a fresh
    init, with a new optimizer and schedule: a warm restart, fine-tuning a draft on new data, or
    moving it to another vocabulary; the logged tokens go on from the ones its train_log.json
    counted.

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
    init = warm_start(draft, init_from) if init_from is not None else None
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
    if init is not None:
        identity["init_from"] = init["sha256"]
    if features is not None:  # fp16 features: not bitwise the run without them
        if len(features) != len(examples):
            raise DraftVocabError("the feature cache does not hold these examples")
        identity["features"] = "fp16-cache"
    for name in draft.identity_omits:
        identity.pop(name)
    step, log, evals, resumed_from = 0, [], [], None
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not resume:
        raise DraftVocabError(f"{out} already holds checkpoints ({checkpoint.name}); pass "
                              "--resume to continue, or choose another --out")
    if resume and checkpoint is not None:
        state = load_checkpoint(checkpoint, draft, opt)
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
    trained_tokens = log[-1].get("tokens", 0) if log else (init or {}).get("tokens", 0)

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
                                  draft.label_steps(config))
            del final
        else:
            target_out = target.forward(batch.ids, use_cache=False)
            labels = ttt_targets(target_out.logits, batch, t2d_dev, draft.label_steps(config))
            hidden = target_out.hidden.float()
            del target_out
        lr = lr_at(step, total, warmup, config.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, fields = draft.training_loss(hidden, batch, labels, config, step, autocast)
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
                                                  "warmup": warmup, "init_from": init,
                                                  "steps": log, "eval": evals}, indent=1))
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


def warm_start(draft: Drafter, path: str | os.PathLike) -> dict[str, Any]:
    """Load the weights of the finished draft at `path` into the fresh `draft` (same drafter,
    shape and target layers, or one clear error). Returns what the run records of it: its
    path, the sha256 of its weights and the supervised tokens its train_log.json counted.

    The vocabulary may differ (`retrim_state`): a draft trained on one mapping starts another
    with everything but its LM head's new rows, so choosing k again does not mean training again.
    """
    from draftvocab.engine.drafters import read_config, read_state

    path = Path(path)
    config = read_config(path)
    mine, theirs = asdict(draft.config), asdict(config)
    if type(config) is not type(draft.config):
        raise DraftVocabError(f"cannot start from {path}: it is another draft (drafter "
                              f"{type(config).__name__} -> {type(draft.config).__name__})")
    differ = [k for k in mine if theirs[k] != mine[k] and k != "draft_vocab_size"]
    if differ:
        raise DraftVocabError(f"cannot start from {path}: it is another draft (" + ", ".join(
            f"{k} {theirs[k]!r} -> {mine[k]!r}" for k in differ) + ")")
    state = read_state(path, config)
    retrim = None
    if not torch.equal(state["d2t"].long().cpu(), draft.d2t.cpu()):
        state, retrim = retrim_state(state, draft)
    with torch.no_grad():
        draft.load_state_dict(state, strict=True)
    tokens = 0
    log_file = path / LOG_NAME
    if log_file.is_file():
        try:
            steps = json.loads(log_file.read_text()).get("steps") or []
            tokens = int(steps[-1].get("tokens", 0)) if steps else 0
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            pass  # a log that does not parse only loses the token count
    info = {"path": str(path), "sha256": sha256_file(path / "model.safetensors"),
            "tokens": tokens}
    return {**info, "retrim": retrim} if retrim is not None else info


def retrim_state(state: dict[str, torch.Tensor], draft: Drafter
                 ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """`state` (a draft trained on another vocabulary mapping) for `draft`'s mapping: every
    weight as trained, the LM-head row of each token both vocabularies keep as trained, and the
    rows of newly kept tokens as `draft` starts them (the target's LM-head rows, `build_draft`).
    The LM head is a drafter's only vocabulary-shaped weight; `warm_start` has checked that
    everything else in the two configs agrees."""
    own = draft.state_dict()
    old_ids = torch.arange(state["d2t"].numel()) + state["d2t"].long().cpu()
    k = draft.d2t.numel()
    new_ids = draft.to_target_ids(torch.arange(k, device=draft.d2t.device)).cpu()
    row = torch.full((draft.t2d.numel(),), -1, dtype=torch.long)
    row[old_ids] = torch.arange(old_ids.numel())
    src = row[new_ids]
    kept = src >= 0
    head = own["lm_head.weight"].detach().clone()
    head[kept.to(head.device)] = state["lm_head.weight"][src[kept]].to(head)
    state = {**state, "lm_head.weight": head, "d2t": own["d2t"], "t2d": own["t2d"]}
    return state, {"from_k": int(old_ids.numel()), "to_k": int(new_ids.numel()),
                   "rows_kept": int(kept.sum()), "rows_new": int((~kept).sum())}


def mapping_tensors(m, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d2t/t2d tensors of a loaded VocabMapping, checked against the target's V."""
    if m.vocab_size != vocab_size:
        raise DraftVocabError(f"the mapping is for V={m.vocab_size:,} but the target's "
                              f"vocab_size is {vocab_size:,}")
    return torch.from_numpy(m.d2t.astype(np.int64)), torch.from_numpy(m.t2d.astype(bool))