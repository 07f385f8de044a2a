"""Counting on an existing data engine, for datasets larger than one machine handles: Hugging
Face `datasets` locally (Arrow reading, memory-mapped, counted in the built-in worker pool), or
Ray Data on a cluster (`pip install 'draftvocab[ray]'`).

Both run the same batch function as the built-in counter — records → messages → assistant
spans → supervised ids — and ship back only a sparse (id, count) pair per batch, so the driver
holds one int64[V] vector however large the data. The result is the same `TokenCounts`
artefact as `count_tokens`, token for token (tested on the same data). Reading records is
`chat`'s; the batch function and worker pool are `counts.py`'s, the artefact `token_counts.py`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from draftvocab.chat.conversations import Conversation
from draftvocab.chat.messages import DEFAULT_ROLES, ColumnMap, checked_role_map, record_to_chat
from draftvocab.chat.spans import ChatSpans
from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.counts import _count_batch, check_ids, worker_pool
from draftvocab.vocab.token_counts import TokenCounts, finish_counts

ENGINES = ("datasets", "ray")


def _drop_nulls(value: Any) -> Any:
    """Arrow gives every row every field of the file, absent ones as None: drop them again, so
    a ShareGPT row beside OpenAI rows has no `messages: None` (and its turns no `role: None`)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _batch_counts(records: list[dict], spans: ChatSpans, columns: ColumnMap,
                  roles: dict[str, str]) -> dict[str, Any]:
    """Sparse supervised-token counts of one batch of raw records, with its statistics."""
    conversations, skipped, dropped = [], Counter(), Counter()
    for i, record in enumerate(records):
        chat = record_to_chat(_drop_nulls(record), f"batch record {i}", columns, roles, dropped)
        if not chat.messages:
            skipped["empty_conversation"] += 1
        elif not any(m["role"] == "assistant" for m in chat.messages):
            skipped["no_assistant_turn"] += 1
        else:
            conversations.append(Conversation(chat.messages, f"record {i}", None, chat.tools,
                                              chat.template_kwargs))
    res = _count_batch(conversations, spans)
    skipped.update(res.skipped)
    ids, counts = np.unique(res.ids, return_counts=True)
    return {"ids": ids.astype(np.int64), "counts": counts.astype(np.int64),
            "conversations": res.conversations, "skipped": dict(skipped),
            "stats": {"left_out": dict(res.left_out), "turn_notes": dict(res.notes),
                      "dropped_fields": dict(dropped),
                      "skipped_examples": {k: f"{v} (in a batch)"
                                           for k, v in res.examples.items()}}}


def _absorb(parts, vocab_size: int) -> tuple[np.ndarray, int, Counter, dict[str, Any]]:
    total = np.zeros(vocab_size, dtype=np.int64)
    conversations, skipped = 0, Counter()
    extra: dict[str, Any] = {"left_out": Counter(), "turn_notes": Counter(),
                             "dropped_fields": Counter(), "skipped_examples": {}}
    for part in parts:
        ids = np.asarray(part["ids"], dtype=np.int64)
        check_ids(ids, vocab_size)
        np.add.at(total, ids, np.asarray(part["counts"], dtype=np.int64))
        conversations += int(part["conversations"])
        skipped.update({k: v for k, v in (part["skipped"] or {}).items() if v})
        stats = dict(part["stats"] or {})
        for reason, text in (stats.pop("skipped_examples", None) or {}).items():
            extra["skipped_examples"].setdefault(reason, text)
        for key, values in stats.items():
            extra[key].update({k: v for k, v in (values or {}).items() if v})
    return total, conversations, skipped, extra


def _builder(files: Sequence[str]) -> str:
    """JSON Lines are read as text and parsed per record (Arrow's JSON reader cannot unify
    mixed chat schemas); JSON arrays and Parquet by their own readers."""
    suffixes = {os.path.splitext(f.removesuffix(".gz"))[1] for f in files}
    for kind, allowed in (("text", {".jsonl"}), ("json", {".json"}), ("parquet", {".parquet"})):
        if suffixes == allowed:
            return kind
    raise DraftVocabError(f"the {', '.join(ENGINES)} engines read .jsonl, .json or .parquet "
                          f"files (one kind per run), got {sorted(suffixes)}")


def _records(rows: list[dict]) -> list[dict]:
    """Rows of a text read are {"text": line}: parse them; other rows are records already."""
    if rows and set(rows[0]) == {"text"}:
        out = []
        for row in rows:
            line = row["text"]
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DraftVocabError(f"malformed JSON line ({exc.msg}): {line[:80]!r}") from None
        return out
    return rows


@contextlib.contextmanager
def _engine_errors(engine: str, files: Sequence[str]):
    """A data engine's failure (a file its reader cannot parse, a worker that died) as one
    line naming the files; our own errors and interrupts pass through unchanged."""
    try:
        yield
    except (DraftVocabError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the engines raise many kinds, often wrapped
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, DraftVocabError | KeyboardInterrupt):
            raise cause from None
        names = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        text = str(cause).strip().splitlines()
        raise DraftVocabError(
            f"the {engine} engine cannot read {names}: {type(cause).__name__}: "
            f"{text[0] if text else ''} (the local engine reads damaged files: "
            "--engine local --skip-bad-lines)") from None


_ROWS: Any = None  # the loaded dataset; forked counting workers inherit it, tasks are (start, stop)


def _count_rows(start: int, stop: int, columns: ColumnMap, roles: dict[str, str],
                spans: ChatSpans | None = None) -> dict[str, Any]:
    """Count rows [start, stop) of `_ROWS` (in a worker: with the spans the pool gave it)."""
    from draftvocab.vocab import counts
    batch = _ROWS[start:stop]
    records = _records([{k: batch[k][i] for k in batch} for i in range(stop - start)])
    return _batch_counts(records, spans or counts._WORKER_SPANS, columns, roles)


def count_with_datasets(files: Sequence[str], spans: ChatSpans, vocab_size: int, *,
                        num_proc: int | None = None, batch_size: int = 256,
                        columns: ColumnMap | None = None,
                        role_map: dict[str, str] | None = None) -> TokenCounts:
    """Read the files with `datasets` (Arrow, memory-mapped) and count its rows in `num_proc`
    processes of the built-in counter's pool.

    Not `Dataset.map(num_proc=...)`: its `multiprocess.Pool` hangs for good in `terminate()`
    when a worker dies holding the task queue's lock — which a Ctrl-C or SIGTERM sent to the
    process group does at random. The built-in pool kills its workers and never waits on them."""
    import datasets

    global _ROWS
    columns = columns or ColumnMap()
    roles = {**DEFAULT_ROLES, **checked_role_map(role_map)}
    datasets.disable_progress_bars()
    builder = _builder(files)
    with _engine_errors("datasets", files):
        ds = datasets.load_dataset(builder, data_files=list(files), split="train")
    bounds = [(i, min(i + batch_size, len(ds))) for i in range(0, len(ds), batch_size)]
    _ROWS = ds
    try:
        with _engine_errors("datasets", files):
            if not num_proc or num_proc == 1:
                parts = [_count_rows(a, b, columns, roles, spans) for a, b in bounds]
            else:
                with worker_pool(num_proc, spans) as pool:
                    futures = [pool.submit(_count_rows, a, b, columns, roles) for a, b in bounds]
                    parts = [f.result() for f in futures]  # input order: deterministic examples
    finally:
        _ROWS = None
    total, conversations, skipped, extra = _absorb(parts, vocab_size)
    return finish_counts(total, spans, conversations, skipped,
                         [{"kind": "files", "engine": "datasets", "files": list(files)}], extra)


def count_with_ray(files: Sequence[str], spans: ChatSpans, vocab_size: int, *,
                   batch_size: int = 256, columns: ColumnMap | None = None,
                   role_map: dict[str, str] | None = None,
                   address: str | None = None) -> TokenCounts:
    """Count with Ray Data `map_batches` (a running cluster at `address`, or a local one)."""
    try:
        import ray
    except ImportError:
        raise DraftVocabError("the ray engine needs Ray Data: pip install 'draftvocab[ray]'") from None

    columns = columns or ColumnMap()
    roles = {**DEFAULT_ROLES, **checked_role_map(role_map)}
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    read = {"text": ray.data.read_text, "json": ray.data.read_json,
            "parquet": ray.data.read_parquet}[_builder(files)]
    with _engine_errors("ray", files):
        ds = read(list(files))

    def fn(batch) -> dict[str, np.ndarray]:
        out = _batch_counts(_records(batch.to_pylist()), spans, columns, roles)
        skipped = np.array([json.dumps(out["skipped"])])
        ids, counts = np.empty(1, dtype=object), np.empty(1, dtype=object)
        ids[0], counts[0] = out["ids"], out["counts"]
        return {"ids": ids, "counts": counts, "conversations": np.array([out["conversations"]]),
                "skipped": skipped, "stats": np.array([json.dumps(out["stats"])])}

    parts = ds.map_batches(fn, batch_size=batch_size, batch_format="pyarrow")
    total, conversations, skipped, extra = _absorb(
        ({**r, "skipped": json.loads(r["skipped"]), "stats": json.loads(r["stats"])}
         for r in parts.iter_rows()), vocab_size)
    return finish_counts(total, spans, conversations, skipped,
                         [{"kind": "files", "engine": "ray", "files": list(files)}], extra)
