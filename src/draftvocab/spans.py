"""Chat template -> the supervised (assistant) spans of a conversation, in characters and tokens.

Works for any chat template without knowing its header strings. The conversation is rendered
twice with the tokenizer's own template: as is, and with each assistant content replaced by a
unique sentinel. The sentinel render splits the text into template-owned *scaffold* pieces; the
real render must then be exactly those pieces with each assistant content in between (possibly
whitespace-trimmed by the template, e.g. Llama-3's `| trim`). Because both renders run through the
whole template at once, templates that are not prefix-stable (Qwen3 and DeepSeek-R1 rewriting
earlier turns, Mistral-Nemo moving the system prompt) are handled. A template that rewrites the
content itself fails the check and the conversation is reported, never silently mis-masked.

Supervised tokens are those overlapping an assistant content span, plus the end-of-turn token:
the special token the template emits right after the content (`<|eot_id|>`, `<|im_end|>`, ...).
Text a template injects into the assistant turn (Qwen3's empty `<think>\n\n</think>\n\n`) is
scaffold, not content, and is not supervised: the model does not generate it in non-thinking use.
Tokenisation is left to the caller's batch encoder; this module maps offsets to token ranges.

Counting only needs the tokens around assistant contents. A fast tokenizer cuts its input at
added tokens (`<|eot_id|>`, `<|im_start|>`, ...) before anything else and tokenises the pieces
independently, so for tokenizers whose normaliser and pre-tokenizer are local to a piece,
encoding the slice between the added tokens that enclose a content gives exactly the tokens the
whole text has there. `ChatSpans.windows` returns those slices and counting skips user and
system text; any other tokenizer gets the whole text as one window.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import numpy as np

from draftvocab.errors import DraftVocabError

Messages = Sequence[dict[str, str]]
# What a chat template may raise on a conversation it refuses (raise_exception, missing keys).
_TEMPLATE_ERRORS = (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError,
                    IndexError)

# Whitespace trims templates apply to content, tried in this order when matching.
_TRIMS = (
    lambda s: s,
    str.strip,
    str.lstrip,
    str.rstrip,
    lambda s: s.lstrip("\n"),
    lambda s: s.rstrip("\n"),
    lambda s: s.strip("\n"),
)

_PROBE: list[dict[str, str]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "3 + 3 = 6."},
]


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
    """A rendered conversation and the [start, end) character span of each assistant content."""

    text: str
    spans: tuple[tuple[int, int], ...]


class ChatSpans:
    """Renders conversations with a tokenizer's chat template and locates assistant spans.

    >>> spans = ChatSpans(tokenizer, template_kwargs={"date_string": "26 Jul 2024"})
    >>> ids, mask = spans.supervised_tokens(messages)   # int64 ids, bool mask, same length
    """

    def __init__(self, tokenizer, *, template_kwargs: dict[str, Any] | None = None,
                 include_eot: bool = True, check: bool = True, windows: bool = True):
        if not getattr(tokenizer, "chat_template", None):
            raise DraftVocabError(
                f"tokenizer '{tokenizer.name_or_path}' has no chat template; "
                "pass one with --chat-template FILE.jinja"
            )
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        self.include_eot = include_eot
        decoder = tokenizer.added_tokens_decoder
        self.special_ids = frozenset(
            {i for i, t in decoder.items() if t.special} | set(tokenizer.all_special_ids)
        )
        self._added = _added_token_pattern(tokenizer) if windows else None
        if check:
            self.check()

    # -- rendering -------------------------------------------------------------------------

    def _apply(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=False, **self.template_kwargs
        )

    def _render_raw(self, messages: list[dict[str, str]]) -> str:
        try:
            return self._apply(messages)
        except _TEMPLATE_ERRORS as exc:
            # Templates without a system role (Gemma-2): fold it into the first user turn.
            merged = _fold_system(messages)
            if merged is not None:
                with contextlib.suppress(*_TEMPLATE_ERRORS):
                    return self._apply(merged)
            raise SpanError(
                "template_error", f"chat template refused the conversation: {exc}"
            ) from None

    def render(self, messages: Messages) -> RenderedChat:
        """Render `messages`; raise SpanError if assistant spans cannot be located exactly."""
        real = [{"role": m["role"], "content": m["content"]} for m in messages]
        assistant = [i for i, m in enumerate(real) if m["role"] == "assistant"]
        if not assistant:
            raise SpanError("no_assistant_turn", "conversation has no assistant turn")
        nonce = secrets.token_hex(6)
        sentinels = [f"DVSPAN{nonce}N{j}E" for j in range(len(assistant))]
        masked = [dict(m) for m in real]
        for j, i in enumerate(assistant):
            masked[i]["content"] = sentinels[j]
        text = self._render_raw(real)
        scaffold_text = self._render_raw(masked)

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
            content = real[assistant[j]]["content"]
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
        try:
            rendered = self.render(_PROBE)
        except SpanError as exc:
            name = self.tokenizer.name_or_path
            raise DraftVocabError(
                f"cannot locate assistant spans with the chat template of '{name}': {exc}"
            ) from None
        if len(rendered.spans) != 2:
            raise DraftVocabError("chat template check failed: expected 2 assistant spans")

    # -- tokens ----------------------------------------------------------------------------

    def windows(self, rendered: RenderedChat) -> list[RenderedChat]:
        """The slices of `rendered` to encode, each with the content spans inside it.

        A window runs from the added token (or text start) before a content to the one after it
        (or text end), plus the end-of-turn token when it follows the content directly; windows
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
            if end == b and b in matches:  # the end-of-turn token right after the content
                end = matches[b]
            if cut and start < cut[-1][1]:
                cut[-1][1] = max(cut[-1][1], end)
                cut[-1][3] = i + 1
            else:
                cut.append([start, end, i, i + 1])
        return [RenderedChat(text[s:e], tuple((a - s, b - s) for a, b in rendered.spans[i:j]))
                for s, e, i, j in cut]

    def token_ranges(self, encoding, rendered: RenderedChat, ids: Sequence[int]) -> list[range]:
        """Token index ranges supervised in `encoding` (a `tokenizers.Encoding` of the text)."""
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
            if (self.include_eot and end < n and ids[end] in self.special_ids
                    and encoding.token_to_chars(end)[0] == b):
                end += 1
            if end > t0:
                ranges.append(range(t0, end))
        return ranges

    def supervised_tokens(self, messages: Messages) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of the rendered conversation and its supervised mask."""
        rendered = self.render(messages)
        enc = self.tokenizer.backend_tokenizer.encode(rendered.text, add_special_tokens=False)
        ids = enc.ids
        mask = np.zeros(len(ids), dtype=bool)
        for r in self.token_ranges(enc, rendered, ids):
            mask[r.start:r.stop] = True
        return np.asarray(ids, dtype=np.int64), mask


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


def _fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return None
    rest = messages[1:]
    first = {"role": "user", "content": messages[0]["content"] + "\n\n" + rest[0]["content"]}
    return [first, *rest[1:]]


def _ranges_from_offsets(offsets, a: int, b: int) -> tuple[int, int]:
    arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    overlap = np.nonzero((arr[:, 0] < b) & (arr[:, 1] > a))[0]
    if overlap.size == 0:
        return 0, 0
    return int(overlap[0]), int(overlap[-1]) + 1


def _first_token_at(encoding, a: int, n: int) -> int:
    t = encoding.char_to_token(a)
    return n if t is None else t
