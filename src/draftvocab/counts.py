"""Token frequencies over supervised (assistant) tokens, and the counts artefact.

Owns the counting pipeline (render -> batch-encode -> mask -> bincount) and the on-disk format:
one `.safetensors` file holding `counts` (int64[V], V = the target config's vocab_size) and a JSON
metadata string saying exactly what was counted (tokenizer and template hashes, dataset
fingerprint, sample and token counts, skip reasons). No timestamps: counting the same input twice
gives byte-identical files. Reading datasets and finding spans are left to `conversations` and
`spans`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from draftvocab import __version__
from draftvocab.assets import sha256_text, tokenizer_fingerprint
from draftvocab.atomic import atomic_write
from draftvocab.errors import DraftVocabError
from draftvocab.spans import ChatSpans, SpanError

FORMAT = "draftvocab.counts/1"


@dataclass
class TokenCounts:
    """Supervised-token frequencies `counts[token_id]` and what they were counted from."""

    counts: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(self.counts.shape[0])

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.numpy import save

        meta = {**self.metadata, "format": FORMAT, "vocab_size": self.vocab_size}
        blob = save({"counts": np.ascontiguousarray(self.counts, dtype=np.int64)},
                    metadata={"draftvocab": json.dumps(meta, sort_keys=True)})
        return atomic_write(path, blob)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenCounts:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise DraftVocabError(f"no such counts file: {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                raw = (f.metadata() or {}).get("draftvocab")
                counts = f.get_tensor("counts") if "counts" in f.keys() else None  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise DraftVocabError(f"{path} is not a safetensors file: {exc}") from None
        if raw is None or counts is None:
            raise DraftVocabError(f"{path} is not a draftvocab counts file")
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict):
            raise DraftVocabError(f"{path}: the draftvocab metadata is not a JSON object")
        if meta.get("format") != FORMAT or counts.dtype != np.int64 or counts.ndim != 1:
            raise DraftVocabError(f"{path}: unsupported counts format {meta.get('format')}")
        return cls(counts=counts, metadata=meta)


def merge_counts(parts: Iterable[TokenCounts]) -> TokenCounts:
    """Sum counts from several shards counted with the same tokenizer, template and V."""
    parts = list(parts)
    if not parts:
        raise DraftVocabError("nothing to merge")
    keys = ("vocab_size", "tokenizer", "chat_template", "include_eot")
    first = parts[0]
    for p in parts[1:]:
        for k in keys:
            a = first.metadata.get(k, first.vocab_size if k == "vocab_size" else None)
            b = p.metadata.get(k, p.vocab_size if k == "vocab_size" else None)
            if a != b:
                raise DraftVocabError(f"cannot merge counts with different {k}: {a} vs {b}")
    skipped: Counter[str] = Counter()
    for p in parts:
        skipped.update(p.metadata.get("skipped", {}))
    meta = {k: first.metadata.get(k) for k in (*keys, "template_kwargs")}
    meta.update(
        datasets=[d for p in parts for d in p.metadata.get("datasets", [])],
        conversations=sum(p.metadata.get("conversations", 0) for p in parts),
        supervised_tokens=sum(p.metadata.get("supervised_tokens", 0) for p in parts),
        skipped=dict(sorted(skipped.items())),
        draftvocab_version=__version__,
    )
    counts = np.sum([p.counts for p in parts], axis=0, dtype=np.int64)
    return TokenCounts(counts=counts, metadata=meta)


# --- counting pipeline -------------------------------------------------------------------------

@dataclass
class _BatchResult:
    ids: np.ndarray  # supervised token ids of the batch
    skipped: Counter
    used: list[int] = field(default_factory=list)  # batch index of each counted conversation
    sizes: list[int] = field(default_factory=list)  # its number of supervised tokens

    @property
    def conversations(self) -> int:
        return len(self.used)


_WORKER_SPANS: ChatSpans | None = None


def _count_batch(batch: list[list[dict[str, str]]], spans: ChatSpans | None = None) -> _BatchResult:
    spans = spans or _WORKER_SPANS
    skipped: Counter[str] = Counter()
    windows: list = []
    owner: list[int] = []  # which counted conversation each window belongs to
    used: list[int] = []
    for i, messages in enumerate(batch):
        try:
            ws = spans.windows(spans.render(messages))
        except SpanError as exc:
            skipped[exc.reason] += 1
            continue
        owner.extend([len(used)] * len(ws))
        windows.extend(ws)
        used.append(i)
    backend = spans.tokenizer.backend_tokenizer
    encodings = backend.encode_batch([w.text for w in windows], add_special_tokens=False)
    supervised: list[int] = []
    sizes = [0] * len(used)
    for enc, w, o in zip(encodings, windows, owner):
        ids = enc.ids
        for rng in spans.token_ranges(enc, w, ids):
            supervised.extend(ids[rng.start:rng.stop])
            sizes[o] += len(rng)
    return _BatchResult(np.array(supervised, dtype=np.int64), skipped, used, sizes)


def _init_worker(spans: ChatSpans) -> None:
    global _WORKER_SPANS
    _WORKER_SPANS = spans
    # One tokenizer thread per worker process: the processes are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def check_ids(ids: np.ndarray, vocab_size: int) -> None:
    """Every counted id must index the target's V: else tokenizer and config do not match."""
    if ids.size and int(ids.max()) >= vocab_size:
        raise DraftVocabError(
            f"token id {int(ids.max())} >= vocab_size {vocab_size} of the target config: "
            "tokenizer and config do not belong together")


def _raw_batches(conversations: Iterable, size: int) -> Iterator[list]:
    it = iter(conversations)
    while batch := list(islice(it, size)):
        yield batch


def _counted(conversations: Iterable, spans: ChatSpans, batch_size: int,
             workers: int | None) -> Iterator[tuple[list, _BatchResult]]:
    """(batch, its _BatchResult) for every batch, rendered and tokenised by `workers` processes
    (default: all cores), at most two batches per worker in flight so memory stays flat;
    in completion order (everything downstream sums)."""
    workers = workers or os.cpu_count() or 1
    batches = _raw_batches(conversations, batch_size)
    if workers == 1:
        for batch in batches:
            yield batch, _count_batch([getattr(c, "messages", c) for c in batch], spans)
        return
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(spans,)) as pool:
        pending: dict[Future, list] = {}
        for batch in batches:
            pending[pool.submit(_count_batch, [getattr(c, "messages", c) for c in batch])] = batch
            if len(pending) >= 2 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
        for fut in as_completed(list(pending)):
            yield pending.pop(fut), fut.result()


def iter_supervised(conversations: Iterable, spans: ChatSpans, vocab_size: int, *,
                    batch_size: int = 64, workers: int | None = None,
                    skipped: Counter | None = None) -> Iterator[tuple[Any, np.ndarray]]:
    """(conversation, its supervised token ids) for every usable conversation, tokenised by
    `workers` processes like `count_tokens`; in completion order, not input order. For
    analyses that need counts per conversation or per group (`Conversation.group`)."""
    skipped = Counter() if skipped is None else skipped
    for batch, res in _counted(conversations, spans, batch_size, workers):
        check_ids(res.ids, vocab_size)
        skipped.update(res.skipped)
        parts = np.split(res.ids, np.cumsum(res.sizes)[:-1]) if res.used else []
        for i, ids in zip(res.used, parts):
            yield batch[i], ids


def count_by_group(conversations: Iterable, spans: ChatSpans, vocab_size: int,
                   **kwargs) -> dict[str, np.ndarray]:
    """int64[V] supervised-token counts per `Conversation.group` ("all" when unlabelled)."""
    out: dict[str, np.ndarray] = {}
    for conv, ids in iter_supervised(conversations, spans, vocab_size, **kwargs):
        key = getattr(conv, "group", None) or "all"
        if key not in out:
            out[key] = np.zeros(vocab_size, dtype=np.int64)
        np.add.at(out[key], ids, 1)
    if not out:
        raise DraftVocabError("no usable conversations to count")
    return out


def count_tokens(
    conversations: Iterable,
    spans: ChatSpans,
    vocab_size: int,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    dataset_fingerprint: dict[str, Any] | None = None,
) -> TokenCounts:
    """Count supervised-token frequencies over `conversations` into an int64[V] vector.

    `conversations` yields message lists (or objects with `.messages`). Work is split into
    batches rendered and tokenised by `workers` processes (default: all cores); at most two
    batches per worker are in flight, so memory stays flat however long the stream.
    `progress(conversations, supervised_tokens)` is called with increments after each batch.

    >>> counts = count_tokens(read_conversations("chats.jsonl"), ChatSpans(tok), 128_256)
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    skipped: Counter[str] = Counter()
    conversations_counted = 0
    for _, res in _counted(conversations, spans, batch_size, workers):
        if res.ids.size:
            check_ids(res.ids, vocab_size)
            counts += np.bincount(res.ids, minlength=vocab_size)
        skipped.update(res.skipped)
        conversations_counted += res.conversations
        if progress:
            progress(res.conversations + sum(res.skipped.values()), res.ids.size)

    reader_stats = getattr(getattr(conversations, "stats", None), "skipped", None) or {}
    skipped.update(reader_stats)
    return finish_counts(counts, spans, conversations_counted, skipped,
                         [dataset_fingerprint] if dataset_fingerprint else [])


def finish_counts(counts: np.ndarray, spans: ChatSpans, conversations: int, skipped: Counter,
                  datasets: list[dict[str, Any]]) -> TokenCounts:
    """The counts artefact with its metadata (tokenizer and template identity, inputs, skips),
    whichever engine counted."""
    if conversations == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "no records"
        raise DraftVocabError(f"no usable conversations to count ({reasons})")
    tok = spans.tokenizer
    metadata = {
        "tokenizer": tokenizer_fingerprint(tok),
        "chat_template": {"sha256": sha256_text(tok.chat_template)},
        "template_kwargs": spans.template_kwargs,
        "include_eot": spans.include_eot,
        "datasets": datasets,
        "conversations": conversations,
        "supervised_tokens": int(counts.sum()),
        "skipped": dict(sorted(skipped.items())),
        "draftvocab_version": __version__,
    }
    return TokenCounts(counts=counts, metadata=metadata)
