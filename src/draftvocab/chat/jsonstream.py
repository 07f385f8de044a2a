"""Stream the values of one JSON text (a top-level array, or values one after another).

Owns chunked reading and line numbers: the buffer holds one chunk plus one value, so memory
stays flat in the file's size, and a value cut off at the end of the text is told apart from
a malformed one (`BadTail.truncated`). Knows nothing about records or conversations: what a
value must be is `sources.py`'s business.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_CHUNK_CHARS = 1 << 20  # JSON arrays are read in ~1 MB chunks
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class JsonStream:
    """Values of a JSON text read in chunks: the buffer holds one chunk plus one record."""

    def __init__(self, f):
        self.f = f
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.line_pos = 1, 0  # line number at buf[line_pos]
        self.decoder = json.JSONDecoder()

    def _refill(self) -> None:
        # Read at least as much as is pending, so a huge record costs O(size), not O(size²).
        chunk = self.f.read(max(_CHUNK_CHARS, len(self.buf) - self.pos))
        if not chunk:
            self.eof = True
            return
        self.line_at(self.pos)
        self.buf, self.pos, self.line_pos = self.buf[self.pos :] + chunk, 0, 0

    def line_at(self, pos: int) -> int:
        if pos > self.line_pos:
            self.line += self.buf.count("\n", self.line_pos, pos)
            self.line_pos = pos
        return self.line

    def peek(self) -> str:
        """Skip whitespace; the next character, or "" at the end of the text."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos : self.pos + 1]
            self._refill()

    def value(self) -> Any:
        """Decode the value at `pos`, reading more while it is incomplete.

        Raises `BadTail`: truncated=True when the text ends inside the value.
        """
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # Errors near the buffer's end (or an unclosed string) mean "need more text";
                # anything earlier is malformed whatever follows, so stop reading.
                rest = self.buf[exc.pos :]
                unterminated = exc.msg.startswith("Unterminated")
                if (unterminated or len(rest) <= 16) and not self.eof:
                    self._refill()
                    continue
                # At the end of the text: cut off unless a closing bracket shows it was malformed.
                truncated = unterminated or (len(rest) <= 16 and not any(c in rest for c in ",]}"))
                raise BadTail(exc, truncated) from None
            if end == len(self.buf) and not self.eof:  # a bare number may continue
                self._refill()
                continue
            self.pos = end
            return value


class BadTail(Exception):
    def __init__(self, exc: json.JSONDecodeError, truncated: bool):
        self.exc, self.truncated = exc, truncated


def json_values(stream: JsonStream) -> Iterator[tuple[int, Any]]:
    """(line, value) for each element of a top-level array, or each top-level value."""
    first = stream.peek()
    if first == "[":
        stream.pos += 1
        if stream.peek() == "]":
            stream.pos += 1
        else:
            while True:
                line = stream.line_at(stream.pos)
                yield line, stream.value()
                nxt = stream.peek()
                if nxt == ",":
                    stream.pos += 1
                    stream.peek()
                    continue
                if nxt == "]":
                    stream.pos += 1
                    break
                raise BadTail(_expecting("',' or ']'", stream), truncated=nxt == "")
        if stream.peek():
            raise BadTail(_expecting("the end of the file after the array", stream), False)
        return
    while stream.peek():  # one object, or several (JSON Lines saved as .json)
        line = stream.line_at(stream.pos)
        yield line, stream.value()


def _expecting(what: str, stream: JsonStream) -> json.JSONDecodeError:
    return json.JSONDecodeError(f"Expecting {what}", stream.buf, stream.pos)

