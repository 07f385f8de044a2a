"""What a conversation supervises, independent of any chat template: the result types and
the conversation as a template is handed it.

Owns `SpanError`, `RenderedChat` and `Supervision` (what `template_spans.py` produces and
`spans.py` tokenises), the rule names (`SUPERVISE`, `LEADING_ASSISTANT`, `PROMPT_ROLES`), and
the message preparation every render shares: leading assistant turns set aside, None-valued
keys removed, reasoning aliased, the variants tried when a template refuses a conversation,
and notes for what a render leaves out. Rendering is `template_spans.py`'s; tokens `spans.py`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from draftvocab.core.errors import DraftVocabError

Messages = Sequence[dict[str, Any]]
SUPERVISE = ("generated", "content")
LEADING_ASSISTANT = ("drop", "keep")
PROMPT_ROLES = frozenset({"user", "tool", "ipython"})  # a system prompt alone is no prompt


class SpanError(DraftVocabError):
    """One conversation's spans cannot be located exactly; `reason` is a short stats key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # picklable across worker processes
        return (SpanError, (self.reason, str(self)))


@dataclass(frozen=True)
class RenderedChat:
    """A rendered text and the [start, end) character spans supervised in it; the special
    token starting right at a span's end (its end-of-turn token) is supervised too.

    `ids`, when given, holds per span the token ids the target generated for it (None for a
    span to tokenise): a model can write a token sequence that its tokenizer would not
    produce from the text, and those are the tokens a draft must propose.
    """

    text: str
    spans: tuple[tuple[int, int], ...]
    ids: tuple[tuple[int, ...] | None, ...] = ()

    def span_ids(self, i: int) -> tuple[int, ...] | None:
        return self.ids[i] if self.ids else None


@dataclass(frozen=True)
class Supervision:
    """What one conversation supervises.

    `chats`: the texts to tokenise with their spans (empty when no turn answers a prompt).
    `left_out`: the text of each leading assistant turn not supervised (issue: no prompt).
    `notes`: one entry per turn whose reasoning, content or tool call the template does not
    render where the model writes it ("reasoning_not_rendered", ...): counted, never hidden.
    """

    chats: tuple[RenderedChat, ...]
    left_out: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()



def drop_leading(messages: list[dict]) -> tuple[list[dict], list[str]]:
    """Remove the assistant turns that come before any prompt; their texts."""
    first_prompt = next((i for i, m in enumerate(messages) if m["role"] in PROMPT_ROLES),
                        len(messages))
    kept, left_out = [], []
    for i, m in enumerate(messages):
        if i < first_prompt and m["role"] == "assistant":
            left_out.append("".join(
                x for x in (m.get("reasoning_content"), m.get("content")) if x))
        else:
            kept.append(m)
    return kept, left_out


def prepare_messages(messages: Messages) -> list[dict]:
    """What `apply_chat_template` hands a template: None-valued keys removed, reasoning also
    under `thinking` (gpt-oss) beside `reasoning_content` (Qwen3, GLM, Kimi), as transformers
    aliases it. (`token_ids` stay: templates do not read them, `_generated` does.)"""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = m.get("reasoning_content")
        if reasoning is not None:
            m = {"thinking": reasoning, **m}
        out.append(m)
    return out


def template_variants(messages: list[dict]):
    """The conversation as is; then with absent content as "" (templates that string-process
    every content); then with the system prompt folded into the first user turn (templates
    without a system role, such as Gemma-2); then both."""
    yield messages
    blank = [m if "content" in m else {**m, "content": ""} for m in messages]
    if blank != messages:
        yield blank
    for base in (messages, blank):
        folded = _fold_system(base)
        if folded is not None:
            yield folded


def _fold_system(messages: list[dict]) -> list[dict] | None:
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return None
    rest = messages[1:]
    first = {**rest[0], "content": (messages[0].get("content") or "") + "\n\n"
             + (rest[0].get("content") or "")}
    return [first, *rest[1:]]


def unrendered_notes(message: dict, generated: str) -> list[str]:
    """Notes for parts of a turn the template does not write where the model generates."""
    notes = []
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or ""
    if "</think>" in content:  # inline reasoning, as DeepSeek-R1 and Qwen3 write it
        inline, _, content = content.rpartition("</think>")
        reasoning = reasoning or inline.split("<think>")[-1]
    if reasoning.strip() and reasoning.strip() not in generated:
        notes.append("reasoning_not_rendered")
    if content.strip() and content.strip() not in generated:
        notes.append("content_not_rendered")
    if any(c["function"]["name"] not in generated for c in message.get("tool_calls") or ()):
        notes.append("tool_call_not_rendered")
    return notes

