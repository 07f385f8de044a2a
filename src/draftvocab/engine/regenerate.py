"""Regenerate a chat dataset's assistant turns with the target model itself.

Owns the alignment step of EAGLE-style draft training (the draft learns what the target
writes): system/user/tool turns are kept, each assistant turn is replaced, turn by turn, by the
target's own continuation (batched, left-padded `generate`), kept verbatim — reasoning and
tool-call markup included — and finished conversations are appended to a resumable JSONL
file. Reading datasets is `chat.conversations`'s job; the run's bookkeeping and output file are
`regenerate_run.py`'s; the same through a server is `regenerate_remote.py`'s (re-exported here).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from draftvocab.chat.conversations import Conversation
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.regenerate_remote import regenerate_remote
from draftvocab.engine.regenerate_run import (
    TURNS,
    RegenerateStats,
    RegenSettings,
    RegenWork,
    append_lines,
    batch_seed,
    check_options,
    finished_ids,
)
from draftvocab.engine.target import Target

__all__ = ["TURNS", "RegenerateStats", "check_options", "finished_ids", "regenerate",
           "regenerate_remote"]


# Conversations read ahead per batch and sorted by prompt length: a batch is padded to its
# longest prompt, and a Spec-Bench-like mix runs from 30 to 950 tokens (its 567 prompts take
# 330k padded prefill tokens in input order, 126k sorted, for 123k real ones).
SORT_WINDOW = 16


def regenerate(
    conversations: Iterable[Conversation],
    target: Target,
    out_path: str | os.PathLike,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    turns: str = "all",
    template_kwargs: dict[str, Any] | None = None,
    max_prompt_tokens: int | None = None,
    leading_assistant: str = "drop",
    sort_window: int = SORT_WINDOW,
    progress: Callable[[int, int], None] | None = None,
) -> RegenerateStats:
    """Replace each assistant turn with the target's own reply; append conversations to JSONL.

    Each line of `out_path` is `{"id": conversation.source, "messages": [...],
    "generated_tokens": n}`, plus the record's `tools` and the template arguments used
    (`chat_template_kwargs`), and `truncated_turns` when a reply hit `max_new_tokens`. A reply
    is kept exactly as generated (special tokens, reasoning and tool-call markup included,
    nothing stripped) less its stop token, with the ids themselves in `token_ids`, so counting
    the file gives back the generated ids (plus an end-of-turn token for each truncated turn).
    Conversations whose id is already there are skipped, so an
    interrupted run resumes where it stopped. `temperature=0` is greedy; otherwise sampling
    with `top_p`, seeded per batch from `seed`. `turns="first"` regenerates only the first
    assistant turn and drops what follows it. Assistant turns with no user or tool turn before
    them answer no prompt: dropped, or with `leading_assistant="keep"` copied unchanged.
    Skipped, by `stats.skipped` reason: a conversation with a prompt longer than the model's
    context minus `max_new_tokens`, or than `max_prompt_tokens` ("too_long": a training set
    cut at a few hundred tokens has no use for them, and one multi-thousand-token prompt
    slows its whole batch), and one left with no assistant turn to write ("no_prompt").
    Conversations are batched with others of like prompt length read up to `sort_window`
    batches ahead (1: batches in input order), and lines are written in that order, not the
    input's.
    `progress(conversations, tokens)` is called as work finishes.

    >>> reader = read_conversations("chats.jsonl", max_samples=1000)
    >>> stats = regenerate(reader, load_target("smollm2-135m"), "regen.jsonl", batch_size=8)
    >>> stats.written, stats.tokens_per_s
    """
    check_options(batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, turns=turns, leading_assistant=leading_assistant)
    if sort_window < 1:
        raise DraftVocabError(f"sort window must be at least 1 batch, got {sort_window}")
    out_path = Path(out_path)
    if max_new_tokens >= target.max_length:
        raise DraftVocabError(f"max new tokens {max_new_tokens:,} leaves no room for a prompt "
                              f"in the target's context of {target.max_length:,} tokens")
    done = finished_ids(out_path)
    settings = _settings(target, max_new_tokens, temperature, top_p, turns, template_kwargs,
                         max_prompt_tokens)
    settings.keep_leading = leading_assistant == "keep"
    stats = RegenerateStats()
    start = time.perf_counter()
    out = None  # opened at the first finished conversation: an empty run creates no file
    try:
        length = partial(_first_prompt_length, target, settings=settings)
        for batch in _batches(conversations, done, batch_size, stats, progress, length,
                              sort_window):
            finished = _regenerate_batch(batch, target, settings, seed, stats, progress)
            lines = [json.dumps(w.record(settings.template_kwargs), ensure_ascii=False) + "\n"
                     for w in finished]
            out = append_lines(out, out_path, lines)
            stats.written += len(finished)
            if progress:
                progress(len(batch), 0)
    finally:
        if out is not None:
            out.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _settings(target: Target, max_new_tokens: int, temperature: float, top_p: float, turns: str,
              template_kwargs: dict[str, Any] | None,
              max_prompt_tokens: int | None = None) -> RegenSettings:
    tok = target.tokenizer
    stop_ids = target.stop_ids
    if not stop_ids:
        raise DraftVocabError("the target's tokenizer has no end-of-sequence token to stop at")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0]
    return RegenSettings(max_new_tokens, temperature, top_p, turns == "first",
                     dict(template_kwargs or {}), pad_id, stop_ids, max_prompt_tokens)


def _batches(conversations: Iterable[Conversation], done: set[str], batch_size: int,
             stats: RegenerateStats, progress: Callable[[int, int], None] | None,
             length: Callable[[Conversation], int],
             sort_window: int) -> Iterator[list[RegenWork]]:
    """Batches of conversations whose first prompts are alike in `length`: each window of
    `batch_size * sort_window` input conversations is sorted (stably) and cut into batches.

    Windows are cut and sorted *before* finished conversations are dropped, so an interrupted
    batch (written all at once or not at all) comes back on resume with the same members,
    shapes and seed; a finished one comes back empty, or with only the conversations it
    skipped (too long: skipped again without generating)."""
    it = iter(conversations)
    while window := list(islice(it, batch_size * sort_window)):
        window.sort(key=length)
        for start in range(0, len(window), batch_size):
            batch: list[RegenWork] = []
            for conversation in window[start:start + batch_size]:
                if conversation.source in done:
                    stats.already_done += 1
                    if progress:
                        progress(1, 0)
                    continue
                done.add(conversation.source)  # an input that repeats an id is regenerated once
                batch.append(RegenWork(conversation))
            if batch:
                yield batch


def _first_prompt_length(target: Target, conversation: Conversation,
                         settings: RegenSettings) -> int:
    """Tokens in the prompt of the conversation's first turn to write (0 when there is none)."""
    work = RegenWork(conversation)
    if not work.advance(settings.first_only, settings.keep_leading):
        return 0
    return len(_prompt(target, work, settings))


def _regenerate_batch(batch: list[RegenWork], target: Target, settings: RegenSettings, seed: int,
                      stats: RegenerateStats,
                      progress: Callable[[int, int], None] | None) -> list[RegenWork]:
    """Regenerate every turn of a batch; the finished conversations, in input order."""
    limit = target.max_length - settings.max_new_tokens
    if settings.max_prompt_tokens is not None:
        limit = min(limit, settings.max_prompt_tokens)
    too_long: set[int] = set()
    with torch.random.fork_rng(devices=_rng_devices(target.device)):
        # Seeded from the batch's ids, not the run's history: a resumed run samples the same.
        torch.manual_seed(batch_seed(seed, batch))
        while True:
            active = [i for i, w in enumerate(batch)
                      if i not in too_long
                      and w.advance(settings.first_only, settings.keep_leading)]
            prompts = {i: _prompt(target, batch[i], settings) for i in active}
            for i in [i for i in active if len(prompts[i]) > limit]:
                too_long.add(i)
                active.remove(i)
            if not active:
                break
            replies = _generate(target, [prompts[i] for i in active], settings)
            for i, reply in zip(active, replies, strict=True):
                w = batch[i]
                # Exactly what the target wrote, reasoning and tool-call markup included, less
                # the stop token the template writes back as the end of the turn.
                stopped = bool(reply) and reply[-1] in settings.stop_ids
                ids = reply[:-1] if stopped else reply
                text = target.tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=False)
                # The ids go along: the text need not re-tokenise to them (a model may write
                # " a"+"va" where its tokenizer would cut " av"+"a").
                w.messages.append({"role": "assistant", "content": text, "token_ids": ids})
                w.next += 1
                w.turns_done += 1
                w.truncated_turns += not stopped
                w.generated_tokens += len(reply)
            tokens = sum(map(len, replies))
            stats.generated_tokens += tokens
            if progress:
                progress(0, tokens)
    finished = []
    for i, w in enumerate(batch):
        reason = "too_long" if i in too_long else None if w.turns_done else "no_prompt"
        if reason:
            stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
        else:
            finished.append(w)
    return finished


def _prompt(target: Target, work: RegenWork, settings: RegenSettings) -> list[int]:
    tools, kwargs = work.prompt_args(settings.template_kwargs)
    return target.prompt_ids(work.messages, tools=tools, **kwargs)


def _generate(target: Target, prompts: list[list[int]], settings: RegenSettings) -> list[list[int]]:
    """One batched `generate`, left-padded; each reply's ids up to and including the stop."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), settings.pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    # Logits-shaping options are all given, so a model's generation_config.json (top_k=50,
    # repetition_penalty, ...) cannot change what greedy or temperature/top-p sampling means.
    sample = settings.temperature > 0
    shaping: dict[str, Any] = {"do_sample": sample, "temperature": 1.0, "top_p": 1.0}
    if sample:
        shaping.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    out = target.model.generate(
        input_ids=ids.to(target.device), attention_mask=mask.to(target.device),
        max_new_tokens=settings.max_new_tokens, min_new_tokens=0, repetition_penalty=1.0,
        pad_token_id=settings.pad_id, eos_token_id=settings.stop_ids, **shaping,
    )
    new = out[:, width:]
    is_stop = torch.isin(new, torch.tensor(settings.stop_ids, device=new.device))
    lengths = torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1) + 1, new.shape[1])
    return [row[:n] for row, n in zip(new.tolist(), lengths.tolist(), strict=True)]


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []
