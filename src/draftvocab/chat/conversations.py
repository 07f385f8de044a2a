"""Read a chat dataset into conversations: template-ready messages plus tools and arguments.

Owns the reader: `read_conversations` resolves a source (a path, a `save_to_disk` folder, a
`datasets` object, an iterable of records), then `ConversationReader` streams conversations
from it with seeded sampling, skip accounting and an input fingerprint; memory stays flat in
the dataset's size. File formats and bad lines are `sources.py`'s; what a record becomes
(roles, reasoning, tool calls, tools) is `messages.py`'s; tokenizers and chat templates are
`spans.py`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
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
from draftvocab.chat.sources import (
    ObjectUnit,
    ReadStats,
    Unit,
    count_or_raise,
    datasets_kind,
    path_units,
)
from draftvocab.core.assets import sha256_file
from draftvocab.core.errors import DraftVocabError

__all__ = [
    "ColumnMap",
    "Conversation",
    "ConversationReader",
    "ReadStats",
    "parse_role_map",
    "read_conversations",
]


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


# --------------------------------------------------------------------------------------------
# The reader.


class ConversationReader:
    """Re-iterable conversations from one source; see `read_conversations`."""

    def __init__(
        self,
        units: list[Unit],
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
                    count_or_raise(stats, self._skip, exc.reason, loc, f"{exc} ({hint})")
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


def _file_fingerprint(path: Path, name: str) -> dict[str, Any]:
    return {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _units_fingerprint(units: list[Unit], base: dict, root: Path | None) -> dict[str, Any]:
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
            if datasets_kind(obj) == "dict":
                obj, chosen = _pick_split(obj, split, given)
            unit = ObjectUnit(obj, given, "dataset")
            base = {"kind": "save_to_disk", "source": given, "split_chosen": chosen}
            return ConversationReader(
                [unit], display=given, fingerprint_base=base, root=path, **options
            )
        units, kind = path_units(path, given, options["columns"].messages)
        base = {"kind": kind, "source": given}
        return ConversationReader(units, display=given, fingerprint_base=base, **options)

    kind = datasets_kind(source)
    chosen = None
    if kind == "dict":
        source, chosen = _pick_split(source, split, "dataset")
        kind = datasets_kind(source)
    if kind is None:
        if isinstance(source, dict | bytes) or not isinstance(source, Iterable):
            raise DraftVocabError(
                f"cannot read conversations from a {type(source).__name__}; pass a path, a "
                "datasets object or an iterable of dict records"
            )
        kind = "records"
    unit = ObjectUnit(source, "dataset", kind)
    base = {"kind": kind, "source": None, "split_chosen": chosen}
    return ConversationReader([unit], display="dataset", fingerprint_base=base, **options)
