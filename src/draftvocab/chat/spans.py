"""Supervised text -> supervised tokens: the ids and masks counting and training use.

`ChatSpans` is `TemplateSpans` (which text a conversation supervises, see `template_spans.py`)
plus the tokenizer side: windows, token ranges, generated ids spliced in, end-of-turn tokens.
Knows nothing about files (`conversations.py`) or what the counts mean (`vocab`).

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
from collections.abc import Sequence
from typing import Any

import numpy as np

from draftvocab.chat.supervision import (
    LEADING_ASSISTANT,
    PROMPT_ROLES,
    SUPERVISE,
    Messages,
    RenderedChat,
    SpanError,
    Supervision,
)
from draftvocab.chat.template_spans import TemplateSpans

__all__ = ["LEADING_ASSISTANT", "PROMPT_ROLES", "SUPERVISE", "ChatSpans", "RenderedChat",
           "SpanError", "Supervision"]

# Normalisers and pre-tokenizers that act on each piece on its own, whatever precedes it.
# Metaspace (its prefix depends on the piece being first), Prepend and the like are left out.
_LOCAL_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Sequence"}
_LOCAL_PRE_TOKENIZERS = {"ByteLevel", "Split", "Digits", "Punctuation", "Whitespace",
                         "WhitespaceSplit", "Sequence"}


class ChatSpans(TemplateSpans):
    """Renders conversations with a tokenizer's chat template and finds the supervised tokens.

    >>> spans = ChatSpans(tokenizer, template_kwargs={"enable_thinking": False})
    >>> ids, mask = spans.supervised_tokens(messages)   # int64 ids, bool mask, same length
    """

    def __init__(self, tokenizer, *, template_kwargs: dict[str, Any] | None = None,
                 include_eot: bool = True, check: bool = True, windows: bool = True,
                 supervise: str = "generated", leading_assistant: str = "drop"):
        super().__init__(tokenizer, template_kwargs=template_kwargs, supervise=supervise,
                         leading_assistant=leading_assistant)
        self.include_eot = include_eot
        decoder = tokenizer.added_tokens_decoder
        self.special_ids = frozenset(
            {i for i, t in decoder.items() if t.special} | set(tokenizer.all_special_ids)
        )
        self._added = _added_token_pattern(tokenizer) if windows else None
        if check:
            self.check()

    @property
    def rule(self) -> dict[str, Any]:
        """The supervision rule, as recorded in counts metadata."""
        return {"supervise": self.supervise_rule, "leading_assistant": self.leading_assistant,
                "include_eot": self.include_eot}

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



def _ranges_from_offsets(offsets, a: int, b: int) -> tuple[int, int]:
    arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    overlap = np.nonzero((arr[:, 0] < b) & (arr[:, 1] > a))[0]
    if overlap.size == 0:
        return 0, 0
    return int(overlap[0]), int(overlap[-1]) + 1


def _first_token_at(encoding, a: int, n: int) -> int:
    t = encoding.char_to_token(a)
    return n if t is None else t
