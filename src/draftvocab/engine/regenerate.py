"""Regenerate a chat dataset's assistant turns with the target model itself.

Owns the alignment step of EAGLE-style draft training (the draft learns what the target
writes): system/user/tool turns are kept, each assistant turn is replaced, turn by turn, by the
target's own continuation (batched, left-padded `generate`), kept verbatim — reasoning and
tool-call markup included — and finished conversations are appended to a resumable JSONL
file. Reading datasets is `conversations.py`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from draftvocab.chat.conversations import Conversation
from draftvocab.chat.spans import LEADING_ASSISTANT, PROMPT_ROLES
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.target import Target

__all__ = ["TURNS", "RegenerateStats", "check_options", "finished_ids", "regenerate",
           "regenerate_remote"]

TURNS = ("all", "first")


@dataclass
class RegenerateStats:
    """One run: conversations written now, found finished in the output, or skipped (by reason)."""

    written: int = 0
    already_done: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    generated_tokens: int = 0
    seconds: float = 0.0
    skipped_examples: dict[str, str] = field(default_factory=dict)  # first case per reason

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def check_options(*, batch_size: int, max_new_tokens: int, temperature: float, top_p: float,
                  turns: str, leading_assistant: str = "drop") -> None:
    """Raise `DraftVocabError` for option values `regenerate` cannot run with."""
    if batch_size < 1:
        raise DraftVocabError(f"batch size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise DraftVocabError(f"max new tokens must be at least 1, got {max_new_tokens}")
    if not temperature >= 0:  # also rejects NaN
        raise DraftVocabError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise DraftVocabError(f"top_p must be in (0, 1], got {top_p}")
    if turns not in TURNS:
        raise DraftVocabError(f"turns must be one of {', '.join(TURNS)}, got '{turns}'")
    if leading_assistant not in LEADING_ASSISTANT:
        raise DraftVocabError(f"leading-assistant must be one of {', '.join(LEADING_ASSISTANT)}, "
                              f"got '{leading_assistant}'")


def finished_ids(path: str | os.PathLike) -> set[str]:
    """Ids already in a regenerate output file; a last line cut mid-write is truncated away.

    Raises `DraftVocabError` if `path` could not be appended to, so callers can fail early.
    """
    path = Path(path)
    if not path.exists():
        folder = path.parent
        while not folder.exists():  # the folders regenerate would create
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise DraftVocabError(f"cannot write {path}: {folder} is not a writable directory")
        return set()
    if path.is_dir():
        raise DraftVocabError(f"output path {path} is a directory; give a .jsonl file")
    if not path.is_file() or not os.access(path, os.W_OK):
        raise DraftVocabError(f"cannot write {path}: not a writable regular file")
    ids: set[str] = set()
    offset = 0
    try:
        # Read-only first: a file that is not ours is refused before anything is changed.
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    if not (line.startswith(b'{"id": ') or b'{"id": '.startswith(line)):
                        _record_id(line, path, n)  # not a cut-off record of ours: refuse
                    break  # an interrupted write: dropped below, that record redone
                offset += len(line)
                if line.strip():
                    ids.add(_record_id(line, path, n))
        if offset < path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        raise DraftVocabError(f"cannot read {path}: {exc.strerror or exc}") from None
    return ids


def _record_id(line: bytes, path: Path, n: int) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise DraftVocabError(
            f"{path} line {n} is not a regenerate record (a JSON object with an 'id'); "
            "choose another output file")
    return record["id"]


@dataclass
class _Settings:
    max_new_tokens: int
    temperature: float
    top_p: float
    first_only: bool
    template_kwargs: dict[str, Any]
    pad_id: int
    stop_ids: list[int]
    max_prompt_tokens: int | None = None
    keep_leading: bool = False


@dataclass
class _Work:
    """One conversation being regenerated: the messages so far and where it is in the input."""

    conversation: Conversation
    messages: list[dict[str, str]] = field(default_factory=list)
    next: int = 0  # index of the next input message to take
    turns_done: int = 0
    generated_tokens: int = 0

    def advance(self, first_only: bool, keep_leading: bool = False) -> bool:
        """Copy input messages up to the next assistant turn; False when none is left to write.

        An assistant turn with no user or tool turn before it answers no prompt (a system
        prompt alone is none): it is dropped, or with `keep_leading` copied as it is.
        """
        source = self.conversation.messages
        if first_only and self.turns_done:
            return False  # later turns would condition on the input's, not the target's, replies
        while self.next < len(source):
            message = source[self.next]
            if message["role"] != "assistant" or keep_leading:
                if message["role"] == "assistant" and self._prompted():
                    return True
                self.messages.append(dict(message))
            elif self._prompted():
                return True
            self.next += 1
        return False

    def _prompted(self) -> bool:
        return any(m["role"] in PROMPT_ROLES for m in self.messages)

    truncated_turns: int = 0

    def record(self, template_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The output line: the tools and template arguments the prompts were rendered with
        go along, so that counting the file renders exactly those prompts again."""
        out: dict[str, Any] = {"id": self.conversation.source, "messages": self.messages}
        if self.conversation.tools:
            out["tools"] = self.conversation.tools
        kwargs = self.template_kwargs(template_kwargs)
        if kwargs:
            out["chat_template_kwargs"] = kwargs
        out["generated_tokens"] = self.generated_tokens
        if self.truncated_turns:
            out["truncated_turns"] = self.truncated_turns
        return out

    def template_kwargs(self, base: dict[str, Any]) -> dict[str, Any]:
        return {**base, **(self.conversation.template_kwargs or {})}

    def prompt_args(self, base: dict[str, Any]) -> tuple[list | None, dict[str, Any]]:
        """The tools (the record's own win over a `tools` template argument) and the other
        template arguments this conversation's prompts are rendered with."""
        kwargs = self.template_kwargs(base)
        tools = kwargs.pop("tools", None)
        return self.conversation.tools or tools, kwargs


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
    them answer no prompt: dropped, or with `leading_assistant="keep"` copied unchanged. Skipped, by `stats.skipped` reason: a conversation with a prompt
    longer than the model's context minus `max_new_tokens`, or than `max_prompt_tokens`
    ("too_long": a training set cut at a few hundred tokens has no use for them, and one
    multi-thousand-token prompt slows its whole batch), and one left with no
    assistant turn to write ("no_prompt").
    `progress(conversations, tokens)` is called as work finishes.

    >>> reader = read_conversations("chats.jsonl", max_samples=1000)
    >>> stats = regenerate(reader, load_target("smollm2-135m"), "regen.jsonl", batch_size=8)
    >>> stats.written, stats.tokens_per_s
    """
    check_options(batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, turns=turns, leading_assistant=leading_assistant)
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
        for batch in _batches(conversations, done, batch_size, stats, progress):
            finished = _regenerate_batch(batch, target, settings, seed, stats, progress)
            lines = [json.dumps(w.record(settings.template_kwargs), ensure_ascii=False) + "\n"
                     for w in finished]
            out = _append(out, out_path, lines)
            stats.written += len(finished)
            if progress:
                progress(len(batch), 0)
    finally:
        if out is not None:
            out.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _append(out, path: Path, lines: list[str]):
    """Append whole lines durably; the file is opened at the first lines (an empty run
    creates none). Returns the open file (or None) for the next call."""
    if not lines:
        return out
    out = out or _open_for_append(path)
    out.write("".join(lines).encode())
    out.flush()
    os.fsync(out.fileno())
    return out


def _open_for_append(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab")
    except OSError as exc:
        raise DraftVocabError(f"cannot write {path}: {exc.strerror or exc}") from None


def _settings(target: Target, max_new_tokens: int, temperature: float, top_p: float, turns: str,
              template_kwargs: dict[str, Any] | None,
              max_prompt_tokens: int | None = None) -> _Settings:
    tok = target.tokenizer
    stop_ids = target.stop_ids
    if not stop_ids:
        raise DraftVocabError("the target's tokenizer has no end-of-sequence token to stop at")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0]
    return _Settings(max_new_tokens, temperature, top_p, turns == "first",
                     dict(template_kwargs or {}), pad_id, stop_ids, max_prompt_tokens)


def _batches(conversations: Iterable[Conversation], done: set[str], batch_size: int,
             stats: RegenerateStats,
             progress: Callable[[int, int], None] | None) -> Iterator[list[_Work]]:
    """Batches are cut from the input stream *before* finished conversations are dropped, so
    an interrupted batch (written all at once or not at all) comes back on resume with the same
    members, shapes and seed; a finished one comes back empty, or with only the conversations
    it skipped (too long: skipped again without generating)."""
    it = iter(conversations)
    while chunk := list(islice(it, batch_size)):
        batch: list[_Work] = []
        for conversation in chunk:
            if conversation.source in done:
                stats.already_done += 1
                if progress:
                    progress(1, 0)
                continue
            done.add(conversation.source)  # an input that repeats an id is regenerated once
            batch.append(_Work(conversation))
        if batch:
            yield batch


def _regenerate_batch(batch: list[_Work], target: Target, settings: _Settings, seed: int,
                      stats: RegenerateStats,
                      progress: Callable[[int, int], None] | None) -> list[_Work]:
    """Regenerate every turn of a batch; the finished conversations, in input order."""
    limit = target.max_length - settings.max_new_tokens
    if settings.max_prompt_tokens is not None:
        limit = min(limit, settings.max_prompt_tokens)
    too_long: set[int] = set()
    with torch.random.fork_rng(devices=_rng_devices(target.device)):
        # Seeded from the batch's ids, not the run's history: a resumed run samples the same.
        torch.manual_seed(_batch_seed(seed, batch))
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




def _prompt(target: Target, work: _Work, settings: _Settings) -> list[int]:
    tools, kwargs = work.prompt_args(settings.template_kwargs)
    return target.prompt_ids(work.messages, tools=tools, **kwargs)


def _generate(target: Target, prompts: list[list[int]], settings: _Settings) -> list[list[int]]:
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


def _batch_seed(seed: int, batch: list[_Work]) -> int:
    key = "\n".join([str(seed), *(w.conversation.source for w in batch)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


# --- through an OpenAI-compatible server ----------------------------------------------------


def regenerate_remote(
    conversations: Iterable[Conversation],
    endpoint,
    out_path: str | os.PathLike,
    *,
    concurrency: int = 4,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    turns: str = "all",
    template_kwargs: dict[str, Any] | None = None,
    leading_assistant: str = "drop",
    tokenizer=None,
    progress: Callable[[int, int], None] | None = None,
) -> RegenerateStats:
    """`regenerate` through a server (`endpoint.Endpoint`: vLLM, SGLang, llama.cpp,
    `draftvocab serve`): `concurrency` conversations at a time, each turn in order, into the
    same resumable JSONL. Kept from each reply: its content, the `reasoning_content` and tool
    calls the server returns, and its token ids where the server returns them and they decode
    to exactly the content with `tokenizer` (the target's; without one the ids, which no one
    has checked, are not kept — counting re-tokenises the text). Retries are the
    endpoint's; a request the server refuses (a 4xx, e.g. a prompt over its context) skips
    that conversation, counted as "rejected" with the first message in
    `stats.skipped_examples`.

    >>> ep = Endpoint("http://gpu-box:8000/v1", "Qwen/Qwen3-8B")
    >>> stats = regenerate_remote(read_conversations("chats.jsonl"), ep, "regen.jsonl")
    """
    import asyncio

    if concurrency < 1:
        raise DraftVocabError(f"concurrency must be at least 1, got {concurrency}")
    check_options(batch_size=1, max_new_tokens=max_new_tokens,
                  temperature=temperature, top_p=top_p, turns=turns,
                  leading_assistant=leading_assistant)
    out_path = Path(out_path)
    done = finished_ids(out_path)
    settings = _Settings(max_new_tokens, temperature, top_p, turns == "first",
                         dict(template_kwargs or {}), 0, [], None, leading_assistant == "keep")
    stats = RegenerateStats()
    start = time.perf_counter()
    try:
        asyncio.run(_remote(conversations, endpoint, out_path, done, concurrency, settings,
                            seed, stats, tokenizer, progress))
    finally:
        stats.seconds = time.perf_counter() - start
    return stats


async def _remote(conversations, endpoint, out_path: Path, done: set[str], concurrency: int,
                  settings: _Settings, seed: int, stats: RegenerateStats, tokenizer,
                  progress) -> None:
    import asyncio

    from draftvocab.engine.endpoint import RequestRejected

    async def one(w: _Work) -> str | None:
        """Regenerate one conversation's turns; a skip reason, or None."""
        while w.advance(settings.first_only, settings.keep_leading):
            tools, kwargs = w.prompt_args(settings.template_kwargs)
            try:
                reply = await endpoint.chat(
                    [_wire(m) for m in w.messages], max_tokens=settings.max_new_tokens,
                    temperature=settings.temperature, top_p=settings.top_p,
                    seed=_batch_seed(seed, [w]) + w.turns_done, tools=tools,
                    template_kwargs=kwargs or None)
            except RequestRejected as exc:
                stats.skipped_examples.setdefault("rejected", f"{w.conversation.source}: {exc}")
                return "rejected"
            message = reply.message()
            if "token_ids" in message:
                ids = _exact_ids(message["token_ids"], message["content"], tokenizer)
                if ids is None:
                    del message["token_ids"]
                else:
                    message["token_ids"] = ids
            w.messages.append(message)
            w.next += 1
            w.turns_done += 1
            w.truncated_turns += reply.finish_reason == "length"
            w.generated_tokens += reply.tokens
            stats.generated_tokens += reply.tokens
            if progress:
                progress(0, reply.tokens)
        return None if w.turns_done else "no_prompt"

    out = None
    running: dict[asyncio.Task, _Work] = {}
    it = iter(conversations)
    try:
        async with endpoint:
            while True:
                while len(running) < concurrency and (conv := next(it, None)) is not None:
                    if conv.source in done:
                        stats.already_done += 1
                        if progress:
                            progress(1, 0)
                        continue
                    done.add(conv.source)
                    w = _Work(conv)
                    running[asyncio.ensure_future(one(w))] = w
                if not running:
                    break
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    w = running.pop(task)
                    reason = task.result()
                    if reason:
                        stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
                    else:
                        out = _append(out, out_path, [json.dumps(
                            w.record(settings.template_kwargs), ensure_ascii=False) + "\n"])
                        stats.written += 1
                    if progress:
                        progress(1, 0)
    finally:
        for task in running:
            task.cancel()
        if out is not None:
            out.close()


def _wire(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the OpenAI API takes it: tool-call arguments as JSON strings, no ids."""
    out = {k: v for k, v in message.items() if k != "token_ids" and v is not None}
    if message.get("content") is None:
        out["content"] = None if message.get("tool_calls") else ""
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {**c, "function": {**c["function"], "arguments": c["function"]["arguments"]
                               if isinstance(c["function"]["arguments"], str)
                               else json.dumps(c["function"]["arguments"])}}
            for c in message["tool_calls"]]
    return out


def _exact_ids(ids: list[int], text: str, tokenizer) -> list[int] | None:
    """The server's ids less a trailing stop token, if they decode to exactly `text`."""
    if tokenizer is None:
        return None
    special = set(tokenizer.all_special_ids)
    ids = list(ids)
    while True:
        if tokenizer.decode(ids, skip_special_tokens=False) == text:
            return ids
        if not ids or ids[-1] not in special:
            return None
        ids.pop()
