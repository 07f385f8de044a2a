"""Read chat datasets into conversations: template-ready messages plus tools and arguments.

Owns file formats (JSONL, gzip'd JSONL, JSON arrays, Parquet, `datasets` objects and
`save_to_disk` folders), seeded sampling, skip accounting and an input fingerprint. Streams:
memory stays flat in the dataset's size. What a record becomes (roles, reasoning, tool calls,
tools) is `messages.py`'s job; tokenizers and chat templates are `spans.py`'s.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from draftvocab.chat.messages import (
    DEFAULT_ROLES,
    ColumnMap,
    RecordError,
    checked_role_map,
    parse_role_map,
    record_to_chat,
)
from draftvocab.core.errors import DraftVocabError

__all__ = [
    "ColumnMap",
    "Conversation",
    "ConversationReader",
    "ReadStats",
    "parse_role_map",
    "read_conversations",
]

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_SUFFIX_LIST = ", ".join(SUFFIXES)
_CHUNK_CHARS = 1 << 20  # JSON arrays are read in ~1 MB chunks
_PARQUET_BATCH_ROWS = 256
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SKIP_HINT = "use --skip-bad-lines to skip and count such lines"
_TAIL_HINT = "use --skip-bad-lines to stop there and count it"


@dataclass
class Conversation:
    """One conversation; `source` locates it in the input, e.g. "data.jsonl:17", "dataset[42]".

    `messages` are template-ready (see `messages.py`); `tools` and `template_kwargs` are the
    record's own (`tools`, `chat_template_kwargs`), None when it has none.
    """

    messages: list[dict[str, Any]]
    source: str
    group: str | None = None  # the record's `ColumnMap.group` field, e.g. a category
    tools: list[dict] | None = None
    template_kwargs: dict[str, Any] | None = None


@dataclass
class ReadStats:
    """What one pass over the input read and why records were left out.

    `records` counts records in the input (malformed lines are not records); with sampling it
    is the whole input's count from the counting pass. `skipped` maps a reason ("bad_line",
    "not_an_object", "truncated_tail", "no_assistant_turn", "empty_conversation", and with
    --skip-bad-lines the record faults of `messages.RecordError`: "bad_message", "unknown_role",
    "bad_tools", "bad_tool_call", "bad_reasoning", "bad_template_kwargs") to a count.
    `dropped_fields` counts the record fields and message keys that were not read.
    """

    records: int = 0
    yielded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_bad_line: str | None = None
    dropped_fields: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


# --------------------------------------------------------------------------------------------
# Sources: each is a list of units; a unit can count its records and stream them.


@dataclass
class _Loc:
    """Where a record sits: a line of a text file or an index into a table/dataset."""

    name: str
    n: int
    is_line: bool

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.n}" if self.is_line else f"{self.name}[{self.n}]"

    @property
    def words(self) -> str:
        return f"{self.name} line {self.n}" if self.is_line else f"{self.name}[{self.n}]"


def _bad(stats: ReadStats, skip: bool, reason: str, loc: _Loc, message: str) -> None:
    """Raise `message`, or with --skip-bad-lines count `reason` and carry on."""
    if not skip:
        raise DraftVocabError(message)
    stats._skip(reason)
    if stats.first_bad_line is None:
        stats.first_bad_line = loc.tag


def _not_an_object(stats: ReadStats, skip: bool, loc: _Loc, value: Any) -> None:
    _bad(
        stats,
        skip,
        "not_an_object",
        loc,
        f"record in {loc.words} is a {type(value).__name__}, expected a JSON object ({_SKIP_HINT})",
    )


@dataclass
class _FileUnit:
    path: Path
    name: str  # as shown to the user: the given path, or given directory / relative path
    rel: str  # relative to the given path, for the fingerprint
    messages_field: str | None = None  # from ColumnMap: lets Parquet read just that column

    @property
    def kind(self) -> str:
        return next(s for s in SUFFIXES if self.path.name.lower().endswith(s))

    def open(self, mode: str):
        """Open for reading in mode "rb" or "rt" (UTF-8, tolerating a byte-order mark)."""
        encoding = "utf-8-sig" if mode == "rt" else None
        try:
            if self.kind.endswith(".gz"):
                return gzip.open(self.path, mode, encoding=encoding)
            return open(self.path, mode, encoding=encoding)
        except OSError as exc:
            raise DraftVocabError(f"cannot read {self.name}: {exc.strerror or exc}") from None

    def count(self, stats: ReadStats, skip: bool) -> tuple[int, bool]:
        """Number of records, and whether the file had no bad lines (lets pass 2 skip parsing)."""
        if self.kind == ".parquet":
            return _parquet_file(self).metadata.num_rows, True
        bad_before = sum(stats.skipped.values())
        n = sum(1 for _ in self.records(stats, skip))
        return n, sum(stats.skipped.values()) == bad_before

    def records(
        self, stats: ReadStats, skip: bool, wanted: list[int] | None = None, clean: bool = False
    ) -> Iterator[tuple[_Loc, dict]]:
        if self.kind == ".parquet":
            yield from _parquet_records(self, wanted)
        elif self.kind.startswith(".jsonl"):
            yield from _jsonl_records(self, stats, skip, wanted, clean)
        else:
            yield from _json_records(self, stats, skip, wanted)


def _picked(records: Iterator[tuple[_Loc, dict]], wanted: list[int] | None):
    """Keep the records whose index is in sorted `wanted`; stop after the last one."""
    if wanted is None:
        yield from records
        return
    if not wanted:
        return
    w = 0
    for i, item in enumerate(records):
        if i == wanted[w]:
            yield item
            w += 1
            if w == len(wanted):
                return


def _jsonl_records(
    unit: _FileUnit, stats: ReadStats, skip: bool, wanted: list[int] | None, clean: bool
) -> Iterator[tuple[_Loc, dict]]:
    if wanted is not None and not wanted:
        return
    index = w = 0
    lineno = 0
    # Bytes, not text: json.loads decodes each line itself, so a bad byte names its own line.
    with unit.open("rb") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line or line.isspace():
                    continue
                if wanted is not None and clean and index != wanted[w]:
                    index += 1  # every line is a record here: no need to parse unwanted ones
                    continue
                loc = _Loc(unit.name, lineno, True)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    message = (
                        f"malformed JSON in {loc.words}: {exc.msg} at column {exc.colno} "
                        f"({_SKIP_HINT})"
                    )
                    _bad(stats, skip, "bad_line", loc, message)
                    continue
                except UnicodeDecodeError as exc:
                    message = f"{loc.words} is not UTF-8: {exc.reason} ({_SKIP_HINT})"
                    _bad(stats, skip, "bad_line", loc, message)
                    continue
                if not isinstance(record, dict):
                    _not_an_object(stats, skip, loc, record)
                    continue
                if wanted is None or index == wanted[w]:
                    yield loc, record
                    if wanted is not None:
                        w += 1
                        if w == len(wanted):
                            return
                index += 1
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            loc = _Loc(unit.name, lineno + 1, True)
            if isinstance(exc, EOFError):  # gzip stream cut short: like a truncated tail
                message = f"{unit.name} is cut short after line {lineno} ({_TAIL_HINT})"
                _bad(stats, skip, "truncated_tail", loc, message)
                return
            raise DraftVocabError(f"cannot read {unit.name}: {exc}") from None


class _JsonStream:
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

        Raises `_BadTail`: truncated=True when the text ends inside the value.
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
                raise _BadTail(exc, truncated) from None
            if end == len(self.buf) and not self.eof:  # a bare number may continue
                self._refill()
                continue
            self.pos = end
            return value


class _BadTail(Exception):
    def __init__(self, exc: json.JSONDecodeError, truncated: bool):
        self.exc, self.truncated = exc, truncated


def _json_values(stream: _JsonStream) -> Iterator[tuple[int, Any]]:
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
                raise _BadTail(_expecting("',' or ']'", stream), truncated=nxt == "")
        if stream.peek():
            raise _BadTail(_expecting("the end of the file after the array", stream), False)
        return
    while stream.peek():  # one object, or several (JSON Lines saved as .json)
        line = stream.line_at(stream.pos)
        yield line, stream.value()


def _expecting(what: str, stream: _JsonStream) -> json.JSONDecodeError:
    return json.JSONDecodeError(f"Expecting {what}", stream.buf, stream.pos)


def _json_records(
    unit: _FileUnit, stats: ReadStats, skip: bool, wanted: list[int] | None
) -> Iterator[tuple[_Loc, dict]]:
    def records() -> Iterator[tuple[_Loc, dict]]:
        with unit.open("rt") as f:
            stream = _JsonStream(f)
            try:
                for line, value in _json_values(stream):
                    loc = _Loc(unit.name, line, True)
                    if isinstance(value, dict):
                        yield loc, value
                    else:
                        _not_an_object(stats, skip, loc, value)
            except _BadTail as bad:
                start = stream.line_at(stream.pos)
                if bad.truncated:
                    message = (
                        f"truncated JSON in {unit.name} line {start}: the file ends inside a "
                        f"record ({_TAIL_HINT})"
                    )
                else:
                    error_line = start + stream.buf.count("\n", stream.pos, bad.exc.pos)
                    message = (
                        f"malformed JSON in {unit.name} line {error_line}: {bad.exc.msg} "
                        f"({_TAIL_HINT})"
                    )
                # Nothing after a bad value can be trusted in one JSON text: stop there.
                _bad(stats, skip, "truncated_tail", _Loc(unit.name, start, True), message)
            except UnicodeDecodeError as exc:
                line = stream.line_at(stream.pos)
                raise DraftVocabError(
                    f"{unit.name} near line {line} is not UTF-8: {exc.reason}"
                ) from None
            except (EOFError, gzip.BadGzipFile, OSError) as exc:
                raise DraftVocabError(f"cannot read {unit.name}: {exc}") from None

    return _picked(records(), wanted)


def _parquet_file(unit: _FileUnit):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(unit.path)
    except (pa.ArrowException, OSError) as exc:
        raise DraftVocabError(f"cannot read parquet file {unit.name}: {exc}") from None


def _parquet_records(unit: _FileUnit, wanted: list[int] | None) -> Iterator[tuple[_Loc, dict]]:
    import pyarrow as pa

    pf = _parquet_file(unit)
    names = pf.schema_arrow.names
    # Read only the message list when we know where it is: other columns can be large. If it
    # is missing, read everything so the error can list the fields there are.
    fields = [unit.messages_field] if unit.messages_field else ["messages", "conversations"]
    columns = [c for c in fields if c in names] or None
    start, w = 0, 0
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        first, start = start, start + rows
        if wanted is not None:
            if w == len(wanted):
                return
            if wanted[w] >= start:
                continue  # no wanted row in this row group: do not decode it
        try:
            batches = pf.iter_batches(
                batch_size=_PARQUET_BATCH_ROWS, row_groups=[group], columns=columns
            )
            index = first
            for batch in batches:
                for record in batch.to_pylist():
                    if wanted is None:
                        yield _Loc(unit.name, index, False), record
                    elif w < len(wanted) and index == wanted[w]:
                        yield _Loc(unit.name, index, False), record
                        w += 1
                    index += 1
        except (pa.ArrowException, OSError) as exc:
            raise DraftVocabError(f"cannot read parquet file {unit.name}: {exc}") from None


@dataclass
class _ObjectUnit:
    """A `datasets.Dataset`, `IterableDataset` or Python iterable of dict records."""

    obj: Any
    name: str
    kind: str  # "dataset", "iterable_dataset" or "records"
    consumed: bool = False

    @property
    def one_shot(self) -> bool:
        return self.kind == "records" and iter(self.obj) is self.obj

    def _check_unconsumed(self) -> None:
        if self.consumed:
            raise DraftVocabError(
                "the records iterator was already read; pass a list or a datasets.Dataset to "
                "read it again"
            )
        self.consumed = self.one_shot

    def count(self, stats: ReadStats, skip: bool) -> tuple[int, bool]:
        if self.one_shot:
            raise DraftVocabError(
                "max_samples needs two passes over the data; pass a list or a datasets.Dataset, "
                "not a one-shot iterator"
            )
        if self.kind == "dataset":
            return len(self.obj), True
        bad_before = sum(stats.skipped.values())
        n = sum(1 for _ in self.records(stats, skip))
        return n, sum(stats.skipped.values()) == bad_before

    def records(
        self, stats: ReadStats, skip: bool, wanted: list[int] | None = None, clean: bool = False
    ) -> Iterator[tuple[_Loc, dict]]:
        self._check_unconsumed()
        if self.kind == "dataset":
            ds = self.obj.with_format(None)
            if wanted is not None:  # random access: read only the sampled rows
                return ((_Loc(self.name, i, False), r) for i, r in zip(wanted, ds.select(wanted)))
            return ((_Loc(self.name, i, False), r) for i, r in enumerate(ds))
        return _picked(self._dicts(stats, skip), wanted)

    def _dicts(self, stats: ReadStats, skip: bool) -> Iterator[tuple[_Loc, dict]]:
        index = 0
        for i, record in enumerate(self.obj):
            loc = _Loc(self.name, i, False)
            if isinstance(record, dict):
                yield _Loc(self.name, index, False), record
                index += 1
            else:
                _not_an_object(stats, skip, loc, record)


_Unit = _FileUnit | _ObjectUnit


# --------------------------------------------------------------------------------------------
# The reader.


class ConversationReader:
    """Re-iterable conversations from one source; see `read_conversations`."""

    def __init__(
        self,
        units: list[_Unit],
        *,
        display: str,
        fingerprint_base: dict[str, Any],
        columns: ColumnMap,
        role_map: dict[str, str],
        skip_bad_lines: bool,
        max_samples: int | None,
        seed: int,
        root: Path | None = None,
    ):
        self._units = units
        self._root = root  # a save_to_disk folder, hashed whole by fingerprint()
        self._display = display
        self._fingerprint_base = fingerprint_base
        self._columns = columns
        self._role_map = role_map
        self._roles = {**DEFAULT_ROLES, **role_map}
        self._skip = skip_bad_lines
        self._max_samples = max_samples
        self._seed = seed
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[Conversation]:
        return self._read()

    def _read(self) -> Iterator[Conversation]:
        stats = ReadStats()
        plan = self._sample_plan(stats) if self._max_samples is not None else None
        if plan is None:
            stats = ReadStats()  # a counting pass that chose everything counted nothing useful
            record_stats = stats
        else:
            record_stats = ReadStats()  # bad lines were already counted by the counting pass
        dropped: Counter[str] = Counter()
        for u, unit in enumerate(self._units):
            wanted, clean = plan[u] if plan is not None else (None, False)
            for loc, record in unit.records(record_stats, self._skip, wanted, clean):
                if plan is None:
                    stats.records += 1
                try:
                    chat = record_to_chat(record, loc.words, self._columns, self._roles, dropped)
                except RecordError as exc:
                    hint = "use --skip-bad-lines to skip and count such records"
                    _bad(stats, self._skip, exc.reason, loc, f"{exc} ({hint})")
                    continue
                if not chat.messages:
                    stats._skip("empty_conversation")
                elif not any(m["role"] == "assistant" for m in chat.messages):
                    stats._skip("no_assistant_turn")
                else:
                    stats.yielded += 1
                    group = None
                    if self._columns.group is not None and isinstance(record, dict):
                        value = record.get(self._columns.group)
                        group = None if value is None else str(value)
                    yield Conversation(chat.messages, loc.tag, group, chat.tools,
                                       chat.template_kwargs)
        if stats.records == 0:
            self._raise_empty(stats)
        stats.dropped_fields = dict(sorted(dropped.items()))
        self.stats = stats

    def _sample_plan(self, stats: ReadStats) -> list[tuple[list[int], bool]] | None:
        """Per unit: sorted local indices to read, and whether the unit had no bad lines."""
        counted = [unit.count(stats, self._skip) for unit in self._units]
        total = sum(n for n, _ in counted)
        if total == 0:
            self._raise_empty(stats)
        if self._max_samples >= total:
            return None
        chosen = np.random.default_rng(self._seed).choice(total, self._max_samples, replace=False)
        chosen.sort()
        stats.records = total
        plan, start = [], 0
        for n, clean in counted:
            lo, hi = np.searchsorted(chosen, [start, start + n])
            plan.append(((chosen[lo:hi] - start).tolist(), clean))
            start += n
        return plan

    def _raise_empty(self, stats: ReadStats) -> None:
        skipped = ", ".join(f"{reason} {n}" for reason, n in stats.skipped.items())
        note = f" (skipped: {skipped})" if skipped else ""
        raise DraftVocabError(f"dataset {self._display} is empty{note}")

    def fingerprint(self) -> dict[str, Any]:
        """A JSON-serialisable identity of the input and read options, for run metadata.

        File contents are hashed (sha256, streamed); names are relative to the given source.
        """
        return {
            **self._fingerprint_base,
            **_units_fingerprint(self._units, self._fingerprint_base, self._root),
            "columns": asdict(self._columns),
            "role_map": dict(sorted(self._role_map.items())),
            "skip_bad_lines": self._skip,
            "max_samples": self._max_samples,
            "seed": self._seed,
        }


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _file_fingerprint(path: Path, name: str) -> dict[str, Any]:
    return {"name": name, "bytes": path.stat().st_size, "sha256": _sha256_file(path)}


def _units_fingerprint(units: list[_Unit], base: dict, root: Path | None) -> dict[str, Any]:
    kind = base["kind"]
    if kind in ("file", "directory"):
        return {"files": [_file_fingerprint(u.path, u.rel) for u in units]}
    (unit,) = units
    if kind == "records":
        if unit.one_shot:
            return {"num_records": None, "sha256": None}  # hashing would consume it
        digest, n = hashlib.sha256(), 0
        for record in unit.obj:
            line = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str) + "\n"
            digest.update(line.encode())
            n += 1
        return {"num_records": n, "sha256": digest.hexdigest()}
    ds = unit.obj
    split = getattr(ds, "split", None)
    files = {}
    if root is not None:
        rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        files = {"files": [_file_fingerprint(root / rel, rel) for rel in rels]}
    return {
        **files,
        "dataset_fingerprint": getattr(ds, "_fingerprint", None),
        "split": None if split is None else str(split),
        "num_rows": len(ds) if kind != "iterable_dataset" else None,
    }


# --------------------------------------------------------------------------------------------
# Resolving a source.


def _is_save_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _pick_split(dsdict: Any, split: str | None, display: str) -> tuple[Any, str]:
    names = list(dsdict.keys())
    chosen = split or ("train" if "train" in names else None)
    if chosen is None or chosen not in names:
        what = f"has no split '{split}'" if split else "has no 'train' split"
        raise DraftVocabError(
            f"dataset {display} {what}; choose one of: {', '.join(names) or 'none'} (split=...)"
        )
    return dsdict[chosen], chosen


def _datasets_kind(obj: Any) -> str | None:
    """'dict', 'dataset' or 'iterable_dataset' for `datasets` objects; no import if unused."""
    datasets = sys.modules.get("datasets")
    if datasets is None:
        return None
    if isinstance(obj, datasets.DatasetDict | datasets.IterableDatasetDict):
        return "dict"
    if isinstance(obj, datasets.Dataset):
        return "dataset"
    if isinstance(obj, datasets.IterableDataset):
        return "iterable_dataset"
    return None


def _path_units(path: Path, given: str, messages_field: str | None) -> tuple[list[_FileUnit], str]:
    if path.is_file():
        if not path.name.lower().endswith(SUFFIXES):
            raise DraftVocabError(f"unsupported file type for {given}; expected {_SUFFIX_LIST}")
        return [_FileUnit(path, given, path.name, messages_field)], "file"
    # Hidden entries (e.g. a datasets .cache folder) are not data.
    rels = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file()
        and p.name.lower().endswith(SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not rels:
        raise DraftVocabError(f"directory {given} holds no {_SUFFIX_LIST} files")
    units = [_FileUnit(path / rel, os.path.join(given, rel), rel, messages_field) for rel in rels]
    return units, "directory"


def read_conversations(
    source: str | os.PathLike | Iterable[dict],
    *,
    columns: ColumnMap | None = None,
    role_map: dict[str, str] | None = None,
    skip_bad_lines: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
    split: str | None = None,
) -> ConversationReader:
    """Open a chat dataset as re-iterable `Conversation`s with roles system/user/assistant/tool.

    `source` is a .jsonl/.jsonl.gz/.json/.json.gz/.parquet file, a directory of them, a
    `datasets.save_to_disk` directory, a `datasets` (Iterable)Dataset(Dict), or an iterable
    of dict records. Records use the OpenAI `messages` or ShareGPT `conversations` schema
    unless `columns` says otherwise. Conversations without an assistant turn are skipped and
    counted in `reader.stats`. `max_samples` reads a seeded random subset of that many records.

    >>> reader = read_conversations("chats.jsonl", max_samples=1000, seed=0)
    >>> for conversation in reader:
    ...     conversation.messages  # [{"role": "user", "content": "..."}, ...]
    >>> reader.stats.skipped
    {'no_assistant_turn': 3}
    """
    if max_samples is not None and max_samples < 1:
        raise DraftVocabError(f"max_samples must be at least 1, got {max_samples}")
    options = {
        "columns": columns or ColumnMap(),
        "role_map": checked_role_map(role_map),
        "skip_bad_lines": skip_bad_lines,
        "max_samples": max_samples,
        "seed": seed,
    }
    if isinstance(source, str | os.PathLike):
        given = os.fspath(source)
        path = Path(given)
        if not path.exists():
            raise DraftVocabError(f"no such file or directory: {given}")
        if path.is_dir() and _is_save_to_disk(path):
            import datasets

            try:
                obj = datasets.load_from_disk(given)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged folder
                raise DraftVocabError(f"cannot load saved dataset {given}: {exc}") from None
            chosen = None
            if _datasets_kind(obj) == "dict":
                obj, chosen = _pick_split(obj, split, given)
            unit = _ObjectUnit(obj, given, "dataset")
            base = {"kind": "save_to_disk", "source": given, "split_chosen": chosen}
            return ConversationReader(
                [unit], display=given, fingerprint_base=base, root=path, **options
            )
        units, kind = _path_units(path, given, options["columns"].messages)
        base = {"kind": kind, "source": given}
        return ConversationReader(units, display=given, fingerprint_base=base, **options)

    kind = _datasets_kind(source)
    chosen = None
    if kind == "dict":
        source, chosen = _pick_split(source, split, "dataset")
        kind = _datasets_kind(source)
    if kind is None:
        if isinstance(source, dict | bytes) or not isinstance(source, Iterable):
            raise DraftVocabError(
                f"cannot read conversations from a {type(source).__name__}; pass a path, a "
                "datasets object or an iterable of dict records"
            )
        kind = "records"
    unit = _ObjectUnit(source, "dataset", kind)
    base = {"kind": kind, "source": None, "split_chosen": chosen}
    return ConversationReader([unit], display="dataset", fingerprint_base=base, **options)
