"""What one regenerate run shares, whether the target runs here or behind a server.

Owns the option checks, `RegenerateStats`, the per-conversation turn state (`RegenWork`: which
input turn is next, what the target wrote so far, the output record) and the resumable JSONL
output (`finished_ids`, `append_lines`), plus the per-conversation sampling seed. Generating is
`regenerate.py`'s (local target) and `regenerate_remote.py`'s (OpenAI-compatible server).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from draftvocab.chat.conversations import Conversation
from draftvocab.chat.supervision import LEADING_ASSISTANT, PROMPT_ROLES
from draftvocab.core.errors import DraftVocabError

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
class RegenSettings:
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
class RegenWork:
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


def append_lines(out, path: Path, lines: list[str]):
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


def batch_seed(seed: int, batch: list[RegenWork]) -> int:
    key = "\n".join([str(seed), *(w.conversation.source for w in batch)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1

