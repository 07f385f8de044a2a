"""`regenerate` through an OpenAI-compatible server (vLLM, SGLang, llama.cpp, `draftvocab serve`).

Owns the concurrent client loop: `concurrency` conversations at a time, each turn in order,
replies kept with the reasoning, tool calls and token ids the server returns (ids only when they
decode to exactly the reply). The wire protocol and retries are `endpoint.py`'s; the run's
bookkeeping and output file are `regenerate_run.py`'s.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from draftvocab.chat.conversations import Conversation
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.regenerate_run import (
    RegenerateStats,
    RegenSettings,
    RegenWork,
    append_lines,
    batch_seed,
    check_options,
    finished_ids,
)


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
    settings = RegenSettings(max_new_tokens, temperature, top_p, turns == "first",
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
                  settings: RegenSettings, seed: int, stats: RegenerateStats, tokenizer,
                  progress) -> None:
    import asyncio

    from draftvocab.engine.endpoint import RequestRejected

    async def one(w: RegenWork) -> str | None:
        """Regenerate one conversation's turns; a skip reason, or None."""
        while w.advance(settings.first_only, settings.keep_leading):
            tools, kwargs = w.prompt_args(settings.template_kwargs)
            try:
                reply = await endpoint.chat(
                    [_wire(m) for m in w.messages], max_tokens=settings.max_new_tokens,
                    temperature=settings.temperature, top_p=settings.top_p,
                    seed=batch_seed(seed, [w]) + w.turns_done, tools=tools,
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
    running: dict[asyncio.Task, RegenWork] = {}
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
                    w = RegenWork(conv)
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
                        out = append_lines(out, out_path, [json.dumps(
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
