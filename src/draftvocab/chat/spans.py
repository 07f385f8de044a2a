"""Chat template -> the supervised tokens of a conversation: what the target generates.

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

Counting only needs the tokens around supervised text. A fast tokenizer cuts its input at
added tokens (`<|eot_id|>`, `<|im_start|>`, ...) and tokenises the pieces independently, so for
tokenizers whose normaliser and pre-tokenizer are local to a piece, encoding the slice between
the added tokens that enclose a span gives exactly the tokens of the whole text there.
`ChatSpans.windows` returns those slices; any other tokenizer gets the whole text.
"""

from __future__ import annotations

import bisect
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import numpy as np

from draftvocab.core.errors import DraftVocabError

Messages = Sequence[dict[str, Any]]
SUPERVISE = ("generated", "content")
LEADING_ASSISTANT = ("drop", "keep")
PROMPT_ROLES = frozenset({"user", "tool", "ipython"})  # a system prompt alone is no prompt
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

# Normalisers and pre-tokenizers that act on each piece on its own, whatever precedes it.
# Metaspace (its prefix depends on the piece being first), Prepend and the like are left out.
_LOCAL_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Sequence"}
_LOCAL_PRE_TOKENIZERS = {"ByteLevel", "Split", "Digits", "Punctuation", "Whitespace",
                         "WhitespaceSplit", "Sequence"}


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


class ChatSpans:
    """Renders conversations with a tokenizer's chat template and locates what is supervised.

    >>> spans = ChatSpans(tokenizer, template_kwargs={"enable_thinking": False})
    >>> ids, mask = spans.supervised_tokens(messages)   # int64 ids, bool mask, same length
    """

    def __init__(self, tokenizer, *, template_kwargs: dict[str, Any] | None = None,
                 include_eot: bool = True, check: bool = True, windows: bool = True,
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
        self.include_eot = include_eot
        self.supervise_rule = supervise
        self.leading_assistant = leading_assistant
        decoder = tokenizer.added_tokens_decoder
        self.special_ids = frozenset(
            {i for i, t in decoder.items() if t.special} | set(tokenizer.all_special_ids)
        )
        self._added = _added_token_pattern(tokenizer) if windows else None
        self._boundary = _any_added_token_pattern(tokenizer)
        self._trailers: dict[str, str] = {}
        self._compiled = None
        self._special_map = dict(tokenizer.special_tokens_map)  # bos_token, eos_token, ...
        if check:
            self.check()

    def __getstate__(self):  # the compiled template is rebuilt in a worker, not pickled
        return {**self.__dict__, "_compiled": None, "_globals": None}

    @property
    def rule(self) -> dict[str, Any]:
        """The supervision rule, as recorded in counts metadata."""
        return {"supervise": self.supervise_rule, "leading_assistant": self.leading_assistant,
                "include_eot": self.include_eot}

    # -- rendering -------------------------------------------------------------------------

    def _render(self, messages: list[dict], generation: bool, tools, kwargs: dict) -> str:
        """`tokenizer.apply_chat_template(..., tokenize=False)`: transformers' own compiled,
        sandboxed template, without its per-call copying (our messages are plain JSON data,
        prepared once per conversation by `_prepare`) and with the template's globals merged
        once, not per call (a render is ~45 µs; each turn takes two)."""
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
            messages, left_out = _drop_leading(messages)
        if not any(m["role"] == "assistant" for m in messages):
            return Supervision((), tuple(left_out))
        first_error = None
        for variant in _variants(_prepare(messages)):
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
        sentinel = f"DVTAIL{secrets.token_hex(6)}E"
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
            notes.extend(_unrendered(messages[i], full[start:end]))
        return found, tuple(notes)

    def _turn_start(self, messages: list[dict], i: int, full: str, tools, kwargs: dict,
                    prompt: str | None = None) -> int:
        """Where turn i's generated text starts in `full` when the generation prompt is not a
        prefix of it: gpt-oss drops a tool call's analysis once a final answer follows it,
        DeepSeek-R1 opens `<think>` in the prompt but renders none. The renders with two
        sentinel turns (which cannot both begin like this one) part from `full` at the turn's
        own text; the generation prompt's own tail, if `full` has it there, ends the prompt."""
        nonce = secrets.token_hex(6)
        head = min(_common_prefix(full, self._render(
            [*messages[:i], {"role": "assistant", "content": f"{c}DVHEAD{nonce}"}],
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
        nonce = secrets.token_hex(6)
        sentinels = [f"DVSPAN{nonce}N{j}E" for j in range(len(assistant))]
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

    # -- tokens ----------------------------------------------------------------------------

    def windows(self, rendered: RenderedChat) -> list[RenderedChat]:
        """The slices of `rendered` to encode, each with the spans inside it.

        A window runs from the added token (or text start) before a span to the one after it
        (or text end), plus the end-of-turn token when it follows the span directly; windows
        that overlap are merged. Without a piece-local tokenizer: the whole text.
        """
        text = rendered.text
        if self._added is None:
            return [rendered]
        matches = {m.start(): m.end() for m in self._added.finditer(text)}
        bounds = sorted({0, len(text), *matches, *matches.values()})
        cut: list[list[int]] = []  # [start, end, first span index, last span index + 1]
        for i, (a, b) in enumerate(rendered.spans):
            start = bounds[bisect.bisect_right(bounds, a) - 1]
            end = bounds[bisect.bisect_left(bounds, b)]
            if end == b and b in matches:  # the end-of-turn token right after the span
                end = matches[b]
            if cut and start < cut[-1][1]:
                cut[-1][1] = max(cut[-1][1], end)
                cut[-1][3] = i + 1
            else:
                cut.append([start, end, i, i + 1])
        return [RenderedChat(text[s:e], tuple((a - s, b - s) for a, b in rendered.spans[i:j]),
                             rendered.ids[i:j] if rendered.ids else ())
                for s, e, i, j in cut]

    def token_ranges(self, encoding, rendered: RenderedChat, ids: Sequence[int]) -> list[range]:
        """Per span, the token index range supervised in `encoding` (a `tokenizers.Encoding`
        of the text): the tokens overlapping the span, then its end-of-turn token."""
        n = len(ids)
        ranges = []
        for a, b in rendered.spans:
            if b > a:
                t0 = encoding.char_to_token(a)
                t1 = encoding.char_to_token(b - 1)
                if t0 is None or t1 is None:  # chars a normaliser dropped: use offsets
                    t0, end = _ranges_from_offsets(encoding.offsets, a, b)
                else:
                    end = t1 + 1
                    # A last character split over several byte-level tokens (emoji, rare CJK)
                    # maps to its first token only: take the tokens holding its other bytes.
                    while end < n and (chars := encoding.token_to_chars(end)) is not None \
                            and chars[0] < b:
                        end += 1
            else:
                t0 = end = _first_token_at(encoding, a, n)
            if self._eot_at(encoding, ids, end, b):
                end += 1
            ranges.append(range(t0, max(t0, end)))
        return ranges

    def _eot_at(self, encoding, ids: Sequence[int], t: int, b: int) -> bool:
        return (self.include_eot and t < len(ids) and ids[t] in self.special_ids
                and encoding.token_to_chars(t)[0] == b)

    def span_tokens(self, encoding, rendered: RenderedChat) -> list[list[int]]:
        """Per span, its supervised token ids: the ids the target generated where the chat
        carries them, else the text's tokens in `encoding`; then the end-of-turn token."""
        ids = encoding.ids
        out = []
        for k, r in enumerate(self.token_ranges(encoding, rendered, ids)):
            generated = rendered.span_ids(k)
            if generated is None:
                out.append(ids[r.start:r.stop])
            else:
                eot = r.stop > r.start and self._eot_at(encoding, ids, r.stop - 1,
                                                         rendered.spans[k][1])
                out.append([*generated, *ids[r.stop - 1:r.stop]] if eot else list(generated))
        return out

    def encode(self, rendered: RenderedChat) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of one rendered text and its supervised mask (whole-text encoding).

        Spans with generated ids are spliced in as the target wrote them: the text before
        such a span is encoded on its own (as the prompt was), then the ids, then the rest.
        """
        backend = self.tokenizer.backend_tokenizer
        if not rendered.ids:
            enc = backend.encode(rendered.text, add_special_tokens=False)
            mask = np.zeros(len(enc.ids), dtype=bool)
            for r in self.token_ranges(enc, rendered, enc.ids):
                mask[r.start:r.stop] = True
            return np.asarray(enc.ids, dtype=np.int64), mask
        pieces, masks, pos = [], [], 0
        cuts = [(a, b, k) for k, (a, b) in enumerate(rendered.spans)
                if rendered.span_ids(k) is not None]
        for a, b, k in [*cuts, (len(rendered.text), len(rendered.text), None)]:
            inner = [(x - pos, y - pos) for x, y in rendered.spans if pos <= x and y <= a
                     and (x, y) != (a, b)]
            ids, mask = self.encode(RenderedChat(rendered.text[pos:a], tuple(inner)))
            pieces += [ids]
            masks += [mask]
            if k is not None:
                generated = np.asarray(rendered.span_ids(k), dtype=np.int64)
                pieces.append(generated)
                masks.append(np.ones(len(generated), dtype=bool))
                pos = b
                m = self._boundary.match(rendered.text, b) if self._boundary else None
                eot = backend.encode(m.group(), add_special_tokens=False).ids if m else []
                if self.include_eot and len(eot) == 1 and eot[0] in self.special_ids:
                    pieces.append(np.asarray(eot, dtype=np.int64))  # its end-of-turn token
                    masks.append(np.ones(1, dtype=bool))
                    pos = m.end()
        return np.concatenate(pieces), np.concatenate(masks)

    def supervised_sequences(self, messages: Messages, **kwargs
                             ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, mask) per supervised text of a conversation: the training examples."""
        return [self.encode(chat) for chat in self.supervise(messages, **kwargs).chats]

    def supervised_tokens(self, messages: Messages, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and supervised mask of a conversation's texts, concatenated."""
        parts = self.supervised_sequences(messages, **kwargs)
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# -- conversation preparation ----------------------------------------------------------------


def _drop_leading(messages: list[dict]) -> tuple[list[dict], list[str]]:
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


def _prepare(messages: Messages) -> list[dict]:
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


def _variants(messages: list[dict]):
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


def _unrendered(message: dict, generated: str) -> list[str]:
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


# -- tokenizer facts ------------------------------------------------------------------------


def _added_token_pattern(tokenizer) -> re.Pattern | None:
    """Regex finding the tokenizer's added tokens as it does, if windows encode exactly.

    The tokenizer matches added tokens (normalized=False) on the raw text, leftmost-longest;
    the alternation below, longest first, does the same. None when a window could tokenise
    differently from the whole text: added tokens that strip neighbouring whitespace, match on
    normalised text or only as whole words, or a normaliser/pre-tokenizer not known to be local.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())

    def local(node, allowed) -> bool:
        if node is None:
            return True
        kind = node.get("type")
        if kind not in allowed:
            return False
        children = node.get("normalizers") or node.get("pretokenizers") or []
        return all(local(c, allowed) for c in children)

    added = spec.get("added_tokens") or []
    if not added or not (local(spec.get("normalizer"), _LOCAL_NORMALIZERS)
                         and local(spec.get("pre_tokenizer"), _LOCAL_PRE_TOKENIZERS)):
        return None
    if any(t["normalized"] or t["lstrip"] or t["rstrip"] or t["single_word"] for t in added):
        return None
    if '"add_prefix_space": true' in json.dumps(spec.get("pre_tokenizer")):
        return None  # a prefix space per piece: believed local, but not verified here
    contents = sorted({t["content"] for t in added}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, contents)))


def _any_added_token_pattern(tokenizer) -> re.Pattern | None:
    """Every added token, longest first: where the tokenizer always cuts its input."""
    contents = sorted({t.content for t in tokenizer.added_tokens_decoder.values()},
                      key=len, reverse=True)
    return re.compile("|".join(map(re.escape, contents))) if contents else None


def _ranges_from_offsets(offsets, a: int, b: int) -> tuple[int, int]:
    arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    overlap = np.nonzero((arr[:, 0] < b) & (arr[:, 1] > a))[0]
    if overlap.size == 0:
        return 0, 0
    return int(overlap[0]), int(overlap[-1]) + 1


def _first_token_at(encoding, a: int, n: int) -> int:
    t = encoding.char_to_token(a)
    return n if t is None else t
