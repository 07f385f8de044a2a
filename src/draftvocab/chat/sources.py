"""Record sources: dataset files and in-memory objects as streams of (location, dict record).

Owns the file formats (JSONL, gzip'd JSONL, JSON arrays, Parquet) and `datasets` objects or
plain iterables, finding the files under a directory, counting records for sampling, reading
only the wanted ones, and the bad-input policy: a malformed line either raises one clear
`DraftVocabError` or, with --skip-bad-lines, is counted in `ReadStats`. What a record means
(messages, roles, tools) is `messages.py`'s job; sampling and the reader are
`conversations.py`'s.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from draftvocab.chat.jsonstream import BadTail, JsonStream, json_values
from draftvocab.core.errors import DraftVocabError

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_SUFFIX_LIST = ", ".join(SUFFIXES)
_PARQUET_BATCH_ROWS = 256
_SKIP_HINT = "use --skip-bad-lines to skip and count such lines"
_TAIL_HINT = "use --skip-bad-lines to stop there and count it"



def count_by_reading(unit, stats: ReadStats, skip: bool) -> tuple[int, bool]:
    """Records of a unit counted by reading them all, and whether none was bad."""
    bad_before = sum(stats.skipped.values())
    n = sum(1 for _ in unit.records(stats, skip))
    return n, sum(stats.skipped.values()) == bad_before

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
class Loc:
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


def count_or_raise(stats: ReadStats, skip: bool, reason: str, loc: Loc, message: str) -> None:
    """Raise `message`, or with --skip-bad-lines count `reason` and carry on."""
    if not skip:
        raise DraftVocabError(message)
    stats._skip(reason)
    if stats.first_bad_line is None:
        stats.first_bad_line = loc.tag


def _not_an_object(stats: ReadStats, skip: bool, loc: Loc, value: Any) -> None:
    count_or_raise(
        stats,
        skip,
        "not_an_object",
        loc,
        f"record in {loc.words} is a {type(value).__name__}, expected a JSON object ({_SKIP_HINT})",
    )


@dataclass
class FileUnit:
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
        return count_by_reading(self, stats, skip)

    def records(
        self, stats: ReadStats, skip: bool, wanted: list[int] | None = None, clean: bool = False
    ) -> Iterator[tuple[Loc, dict]]:
        if self.kind == ".parquet":
            yield from _parquet_records(self, wanted)
        elif self.kind.startswith(".jsonl"):
            yield from _jsonl_records(self, stats, skip, wanted, clean)
        else:
            yield from _json_records(self, stats, skip, wanted)


def _picked(records: Iterator[tuple[Loc, dict]], wanted: list[int] | None):
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
    unit: FileUnit, stats: ReadStats, skip: bool, wanted: list[int] | None, clean: bool
) -> Iterator[tuple[Loc, dict]]:
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
                loc = Loc(unit.name, lineno, True)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    message = (
                        f"malformed JSON in {loc.words}: {exc.msg} at column {exc.colno} "
                        f"({_SKIP_HINT})"
                    )
                    count_or_raise(stats, skip, "bad_line", loc, message)
                    continue
                except UnicodeDecodeError as exc:
                    message = f"{loc.words} is not UTF-8: {exc.reason} ({_SKIP_HINT})"
                    count_or_raise(stats, skip, "bad_line", loc, message)
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
            loc = Loc(unit.name, lineno + 1, True)
            if isinstance(exc, EOFError):  # gzip stream cut short: like a truncated tail
                message = f"{unit.name} is cut short after line {lineno} ({_TAIL_HINT})"
                count_or_raise(stats, skip, "truncated_tail", loc, message)
                return
            raise DraftVocabError(f"cannot read {unit.name}: {exc}") from None


def _json_records(
    unit: FileUnit, stats: ReadStats, skip: bool, wanted: list[int] | None
) -> Iterator[tuple[Loc, dict]]:
    def records() -> Iterator[tuple[Loc, dict]]:
        with unit.open("rt") as f:
            stream = JsonStream(f)
            try:
                for line, value in json_values(stream):
                    loc = Loc(unit.name, line, True)
                    if isinstance(value, dict):
                        yield loc, value
                    else:
                        _not_an_object(stats, skip, loc, value)
            except BadTail as bad:
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
                count_or_raise(stats, skip, "truncated_tail", Loc(unit.name, start, True), message)
            except UnicodeDecodeError as exc:
                line = stream.line_at(stream.pos)
                raise DraftVocabError(
                    f"{unit.name} near line {line} is not UTF-8: {exc.reason}"
                ) from None
            except (EOFError, gzip.BadGzipFile, OSError) as exc:
                raise DraftVocabError(f"cannot read {unit.name}: {exc}") from None

    return _picked(records(), wanted)


def _parquet_file(unit: FileUnit):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(unit.path)
    except (pa.ArrowException, OSError) as exc:
        raise DraftVocabError(f"cannot read parquet file {unit.name}: {exc}") from None


def _parquet_records(unit: FileUnit, wanted: list[int] | None) -> Iterator[tuple[Loc, dict]]:
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
                        yield Loc(unit.name, index, False), record
                    elif w < len(wanted) and index == wanted[w]:
                        yield Loc(unit.name, index, False), record
                        w += 1
                    index += 1
        except (pa.ArrowException, OSError) as exc:
            raise DraftVocabError(f"cannot read parquet file {unit.name}: {exc}") from None


@dataclass
class ObjectUnit:
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
        return count_by_reading(self, stats, skip)

    def records(
        self, stats: ReadStats, skip: bool, wanted: list[int] | None = None, clean: bool = False
    ) -> Iterator[tuple[Loc, dict]]:
        self._check_unconsumed()
        if self.kind == "dataset":
            ds = self.obj.with_format(None)
            if wanted is not None:  # random access: read only the sampled rows
                return ((Loc(self.name, i, False), r) for i, r in zip(wanted, ds.select(wanted)))
            return ((Loc(self.name, i, False), r) for i, r in enumerate(ds))
        return _picked(self._dicts(stats, skip), wanted)

    def _dicts(self, stats: ReadStats, skip: bool) -> Iterator[tuple[Loc, dict]]:
        index = 0
        for i, record in enumerate(self.obj):
            loc = Loc(self.name, i, False)
            if isinstance(record, dict):
                yield Loc(self.name, index, False), record
                index += 1
            else:
                _not_an_object(stats, skip, loc, record)


Unit = FileUnit | ObjectUnit


def datasets_kind(obj: Any) -> str | None:
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


def path_units(path: Path, given: str, messages_field: str | None) -> tuple[list[FileUnit], str]:
    if path.is_file():
        if not path.name.lower().endswith(SUFFIXES):
            raise DraftVocabError(f"unsupported file type for {given}; expected {_SUFFIX_LIST}")
        return [FileUnit(path, given, path.name, messages_field)], "file"
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
    units = [FileUnit(path / rel, os.path.join(given, rel), rel, messages_field) for rel in rels]
    return units, "directory"

