"""Chat template -> the supervised text of a conversation: what the target generates.

Works for any chat template without knowing its header strings or reasoning/tool-call syntax.
The rule (`supervise="generated"`, the default): for each assistant turn, render the
conversation up to the turn with the generation prompt (P) and up to and including the turn
(F). The target, prompted with P, writes F's continuation: everything from the end of P up to
the end of the turn's text, plus the end-of-turn token — reasoning, `<think>` tags, tool-call
markup and JSON, channel tokens, and whatever the template itself writes after the generation
prompt (Qwen3's empty think block). Each turn is rendered as the last message, the way the
model saw the conversation while writing it, so templates that drop or rewrite earlier turns'
reasoning (Qwen3, GLM) still count every turn's reasoning once. The end of the turn's text is
where F stops sharing its tail with the template's *trailer* (what it writes after a plain last
assistant turn, e.g. `<|im_end|>\n`); the end-of-turn token is the special token there.

Turns whose text is identical in the last turn's render share that text; the others (an earlier
turn whose reasoning the template later drops) keep their own render. `Supervision.chats` are
therefore one text for most conversations, a few for reasoning chats — the same texts
training uses.

An assistant turn with no user or tool turn before it answers no prompt: by default
(`leading_assistant="drop"`) it is not supervised and is reported in `Supervision.left_out`,
as SpecForge and `regenerate` treat it. The older rule (`supervise="content"`): assistant
content + end-of-turn token only, located by rendering the whole conversation with sentinels in
place of the contents; it skips conversations whose content the template rewrites.

Owns rendering (transformers' compiled template, `TemplateSpans._render`), locating each turn's
generated text, grouping turns into shared texts, the content rule and the template check.
Tokens are `spans.py`'s (`ChatSpans` builds on this class); the result types and message
preparation are `supervision.py`'s.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import jinja2

from draftvocab.chat.supervision import (
    LEADING_ASSISTANT,
    PROMPT_ROLES,
    SUPERVISE,
    Messages,
    RenderedChat,
    SpanError,
    Supervision,
    drop_leading,
    prepare_messages,
    template_variants,
    unrendered_notes,
)
from draftvocab.core.errors import DraftVocabError

# What a chat template may raise on a conversation it refuses (raise_exception, missing keys).
_TEMPLATE_ERRORS = (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError,
                    IndexError)

# Whitespace trims templates apply to content, tried in this order when matching (content rule).
_TRIMS = (
    lambda s: s,
    str.strip,
    str.lstrip,
    str.rstrip,
    lambda s: s.lstrip("\n"),
    lambda s: s.rstrip("\n"),
    lambda s: s.strip("\n"),
)

_PROBE: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "3 + 3 = 6."},
]

_PROBE_TOOL = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.", "parameters": {
        "type": "object", "properties": {"a": {"type": "number", "description": "a number"}},
        "required": ["a"]}}}


class TemplateSpans:
    """Renders conversations with a tokenizer's chat template and locates, in characters, what
    each assistant turn generated. `ChatSpans` adds the tokens."""

    def __init__(self, tokenizer, *, template_kwargs: dict[str, Any] | None = None,
                 supervise: str = "generated", leading_assistant: str = "drop"):
        if not getattr(tokenizer, "chat_template", None):
            raise DraftVocabError(
                f"tokenizer '{tokenizer.name_or_path}' has no chat template; "
                "pass one with --chat-template FILE.jinja"
            )
        if supervise not in SUPERVISE:
            raise DraftVocabError(f"supervise must be one of {', '.join(SUPERVISE)}, "
                                  f"got {supervise!r}")
        if leading_assistant not in LEADING_ASSISTANT:
            raise DraftVocabError(f"leading-assistant must be one of "
                                  f"{', '.join(LEADING_ASSISTANT)}, got {leading_assistant!r}")
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        self.supervise_rule = supervise
        self.leading_assistant = leading_assistant
        self._boundary = _any_added_token_pattern(tokenizer)
        self._trailers: dict[str, str] = {}
        self._compiled = None
        self._special_map = dict(tokenizer.special_tokens_map)  # bos_token, eos_token, ...

    def __getstate__(self):  # the compiled template is rebuilt in a worker, not pickled
        return {**self.__dict__, "_compiled": None, "_globals": None}

    # -- rendering -------------------------------------------------------------------------

    def _render(self, messages: list[dict], generation: bool, tools, kwargs: dict) -> str:
        """`tokenizer.apply_chat_template(..., tokenize=False)`: transformers' own compiled,
        sandboxed template, without its per-call copying (our messages are plain JSON data,
        prepared once per conversation by `prepare_messages`) and with the template's globals
        merged once, not per call (a render is ~45 µs; each turn takes two)."""
        if self._compiled is None:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            self._compiled = _compile_jinja_template(self.tokenizer.chat_template)
            self._globals = {**self._compiled.globals, **self._special_map, "documents": None}
        template = self._compiled
        context = template.new_context({**self._globals, **kwargs, "messages": messages,
                                        "tools": tools, "add_generation_prompt": generation},
                                       shared=True)
        return template.environment.concat(template.root_render_func(context))

    def supervise(self, messages: Messages, *, tools: list[dict] | None = None,
                  template_kwargs: dict[str, Any] | None = None,
                  grouped: bool = True) -> Supervision:
        """The supervised texts of one conversation (see the module docstring).

        `tools` and `template_kwargs` are the record's own; the latter override the
        dataset-wide `ChatSpans.template_kwargs`. `grouped=False` gives each turn its own
        render, the rule's definition, which the grouped texts reproduce token for token.
        Raises SpanError if the template refuses the conversation or (content rule) rewrites
        its assistant content.
        """
        kwargs = {**self.template_kwargs, **(template_kwargs or {})}
        default_tools = kwargs.pop("tools", None)
        tools = tools if tools is not None else default_tools
        messages = [m for m in messages]
        if not any(m["role"] == "assistant" for m in messages):
            raise SpanError("no_assistant_turn", "conversation has no assistant turn")
        left_out: list[str] = []
        if self.leading_assistant == "drop":
            messages, left_out = drop_leading(messages)
        if not any(m["role"] == "assistant" for m in messages):
            return Supervision((), tuple(left_out))
        first_error = None
        for variant in template_variants(prepare_messages(messages)):
            try:
                if self.supervise_rule == "content":
                    return Supervision((self._content_spans(variant, tools, kwargs),),
                                       tuple(left_out))
                found, notes = self._generated(variant, tools, kwargs)
                chats = self._group(found) if grouped else tuple(
                    RenderedChat(full, ((start, end),), (ids,) if ids else ())
                    for full, start, end, ids in found)
                return Supervision(chats, tuple(left_out), notes)
            except _TEMPLATE_ERRORS as exc:
                first_error = first_error or exc
        raise SpanError("template_error",
                        f"chat template refused the conversation: {first_error}") from None

    def _trailer(self, tools, kwargs: dict, context: list[dict]) -> str:
        """What the template writes after a plain last assistant turn (`<|im_end|>\\n`,
        `<|eot_id|>`, Phi's `<|end|>\\n` + EOS), found with a sentinel content."""
        key = json.dumps([kwargs, tools is not None], sort_keys=True, default=str)
        if key in self._trailers:
            return self._trailers[key]
        sentinel = _sentinel("Tail")
        for probe in ([{"role": "user", "content": "Hi"}], context):
            try:
                text = self._render([*probe, {"role": "assistant", "content": sentinel}], False,
                                    tools, kwargs)
            except _TEMPLATE_ERRORS:
                continue
            if text.count(sentinel) == 1:
                trailer = text[text.index(sentinel) + len(sentinel):]
                if probe is not context:
                    self._trailers[key] = trailer
                return trailer
        return ""

    def _generated(self, messages: list[dict], tools, kwargs: dict
                   ) -> tuple[list[tuple[str, int, int, tuple | None]], tuple[str, ...]]:
        """Per assistant turn: its own render F, where its generated text starts and ends in
        F, and the ids the target wrote there (if the message has them and they decode to
        exactly that text); and the notes on what the template leaves out."""
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        first_prompt = next((i for i, m in enumerate(messages) if m["role"] in PROMPT_ROLES),
                            len(messages))
        trailer = self._trailer(tools, kwargs, messages[:turns[0]])
        found: list[tuple[str, int, int, tuple | None]] = []  # (F, start, end, ids)
        notes: list[str] = []
        for i in turns:
            full = self._render(messages[: i + 1], False, tools, kwargs)
            if i < first_prompt:  # a leading turn kept on purpose: no generation prompt to use
                start = self._turn_start(messages, i, full, tools, kwargs)
            else:
                prompt = self._render(messages[:i], True, tools, kwargs)
                if full.startswith(prompt):
                    start = len(prompt)
                else:  # the template rewrites the history once this turn follows it
                    start = self._turn_start(messages, i, full, tools, kwargs, prompt)
            end = max(start, len(full) - _common_suffix(full, trailer))
            ids = messages[i].get("token_ids")
            if ids is not None:
                decoded = self.tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=False)
                if decoded == full[start:end]:
                    ids = tuple(ids)
                else:  # another tokenizer's ids, or a template that rewrites the reply
                    ids = None
                    notes.append("token_ids_not_used")
            found.append((full, start, end, ids))
            notes.extend(unrendered_notes(messages[i], full[start:end]))
        return found, tuple(notes)

    def _turn_start(self, messages: list[dict], i: int, full: str, tools, kwargs: dict,
                    prompt: str | None = None) -> int:
        """Where turn i's generated text starts in `full` when the generation prompt is not a
        prefix of it: gpt-oss drops a tool call's analysis once a final answer follows it,
        DeepSeek-R1 opens `<think>` in the prompt but renders none. The renders with two
        sentinel turns (which cannot both begin like this one) part from `full` at the turn's
        own text; the generation prompt's own tail, if `full` has it there, ends the prompt."""
        head_text = _sentinel("Head")
        head = min(_common_prefix(full, self._render(
            [*messages[:i], {"role": "assistant", "content": f"{c}{head_text}"}],
            False, tools, kwargs)) for c in "AB")
        if prompt is not None:
            history = self._render(messages[:i], False, tools, kwargs)
            tail = prompt[len(history):] if prompt.startswith(history) else ""
            at = full.rfind(tail, 0, head) if tail else -1
            if at >= 0:
                return at + len(tail)
        return head

    def _group(self, found: list[tuple[str, int, int, tuple | None]]
               ) -> tuple[RenderedChat, ...]:
        """Place each turn's span in the latest text that holds it exactly: the same
        characters up to the end of its end-of-turn token, cut there by an added token."""
        groups: list[tuple[str, list[tuple[int, int, tuple | None]]]] = []
        for full, start, end, ids in reversed(found):
            stop = end
            m = self._boundary.match(full, end) if self._boundary is not None else None
            if m is not None:
                stop = m.end()
            # The span's tokens are the same in `text` if the characters up to `stop` are,
            # and the tokenizer cuts both texts there: at an added token, or at a text's end
            # where the other continues with an added token.
            for text, spans in groups:
                if text.startswith(full[:stop]) and (m is not None or stop == len(full) and (
                        stop == len(text)
                        or (self._boundary is not None and self._boundary.match(text, stop)))):
                    spans.append((start, end, ids))
                    break
            else:
                groups.append((full, [(start, end, ids)]))
        chats = []
        for text, spans in reversed(groups):
            spans.sort(key=lambda x: x[0])
            ids = tuple(x[2] for x in spans)
            chats.append(RenderedChat(text, tuple((a, b) for a, b, _ in spans),
                                      ids if any(i is not None for i in ids) else ()))
        return tuple(chats)

    def _content_spans(self, real: list[dict], tools, kwargs: dict) -> RenderedChat:
        """The content rule: assistant content located between template-owned scaffold."""
        assistant = [i for i, m in enumerate(real)
                     if m["role"] == "assistant" and (m.get("content") or not m.get("tool_calls"))]
        stem = _sentinel("Span")
        sentinels = [f"{stem}N{j}e" for j in range(len(assistant))]
        masked = [dict(m) for m in real]
        for j, i in enumerate(assistant):
            masked[i]["content"] = sentinels[j]
        text = self._render(real, False, tools, kwargs)
        scaffold_text = self._render(masked, False, tools, kwargs)

        # Split the sentinel render into scaffold pieces around each sentinel, in text order.
        positions = []
        for j, s in enumerate(sentinels):
            at = scaffold_text.find(s)
            if at < 0 or scaffold_text.find(s, at + 1) >= 0:
                raise SpanError("template_drops_content",
                                f"assistant message {j} is not rendered exactly once")
            positions.append((at, j))
        positions.sort()
        pieces, prev = [], 0
        for at, j in positions:
            pieces.append(scaffold_text[prev:at])
            prev = at + len(sentinels[j])
        pieces.append(scaffold_text[prev:])

        # Walk the real render: scaffold, content (maybe trimmed), scaffold, ...
        if not text.startswith(pieces[0]):
            raise SpanError("template_rewrites_content", "renders differ before the first turn")
        pos, spans = len(pieces[0]), []
        for (_, j), after in zip(positions, pieces[1:]):
            content = real[assistant[j]].get("content") or ""
            for trim in _TRIMS:
                x = trim(content)
                if text.startswith(x, pos) and text.startswith(after, pos + len(x)):
                    spans.append((pos, pos + len(x)))
                    pos += len(x) + len(after)
                    break
            else:
                raise SpanError(
                    "template_rewrites_content",
                    f"assistant message {j} is rewritten by the template (not just trimmed)",
                )
        if pos != len(text):
            raise SpanError("template_rewrites_content", "renders differ after the last turn")
        return RenderedChat(text=text, spans=tuple(spans))

    def check(self) -> None:
        """Fail early, with one clear line, if this template's spans cannot be found."""
        name = self.tokenizer.name_or_path
        try:
            sup = self.supervise(_PROBE)
        except SpanError as exc:
            try:  # a tool-use template (Hermes-3) that needs tools to render at all
                sup = self.supervise(_PROBE, tools=[_PROBE_TOOL])
            except SpanError:
                raise DraftVocabError(
                    f"cannot locate assistant spans with the chat template of '{name}': {exc}"
                ) from None
        found = [chat.text[a:b] for chat in sup.chats for a, b in chat.spans]
        answers = [m["content"] for m in _PROBE if m["role"] == "assistant"]
        if len(found) != len(answers) or not all(a in f for a, f in zip(answers, found)):
            raise DraftVocabError(f"chat template check failed for '{name}': expected the two "
                                  f"probe answers to be supervised, found {found!r}")


def _sentinel(kind: str) -> str:
    """A random stand-in for a message's content. Mixed case around the random hex, so a
    template that changes case (`| upper`, `| lower`, `| title`) never leaves it intact: with
    `DVSPAN` + 12 hex digits, one nonce in 280 was all digits and survived `| upper`."""
    return f"Dv{kind}{secrets.token_hex(6)}x"


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n
    if a[:n] == b[:n]:
        return n
    while lo < hi:  # a[:lo] == b[:lo] and a[:hi+1] != b[:hi+1]
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    if a.endswith(b[len(b) - n:]):
        return n
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _any_added_token_pattern(tokenizer) -> re.Pattern | None:
    """Every added token, longest first: where the tokenizer always cuts its input."""
    contents = sorted({t.content for t in tokenizer.added_tokens_decoder.values()},
                      key=len, reverse=True)
    return re.compile("|".join(map(re.escape, contents))) if contents else None

