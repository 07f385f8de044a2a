"""Token frequencies over supervised (assistant) tokens: the counting pipeline on one machine.

Owns render -> batch-encode -> mask -> bincount, spread over a fork-based process pool with at
most two batches per worker in flight (memory stays flat however long the stream), and the
per-conversation variants (`iter_supervised`, `count_by_group`). The artefact and its metadata
are `token_counts.py`'s (re-exported here); reading datasets and finding spans are left to
`chat.conversations` and `chat.spans`; counting on a Ray cluster is `scaleout.py`'s.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from draftvocab.chat.spans import ChatSpans, SpanError
from draftvocab.core import interrupts
from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.token_counts import FORMAT, TokenCounts, finish_counts, merge_counts

__all__ = ["FORMAT", "TokenCounts", "check_ids", "count_by_group", "count_tokens",
           "finish_counts", "iter_supervised", "merge_counts", "worker_pool"]

# --- counting pipeline -------------------------------------------------------------------------

@dataclass
class _BatchResult:
    ids: np.ndarray  # supervised token ids of the batch
    skipped: Counter
    used: list[int] = field(default_factory=list)  # batch index of each counted conversation
    sizes: list[int] = field(default_factory=list)  # its number of supervised tokens
    left_out: Counter = field(default_factory=Counter)  # leading assistant turns, tokens
    notes: Counter = field(default_factory=Counter)  # turns the template does not render whole
    examples: dict[str, str] = field(default_factory=dict)  # first conversation per skip reason
    order: int = 0  # the batch's place in the input

    @property
    def conversations(self) -> int:
        return len(self.used)


_WORKER_SPANS: ChatSpans | None = None


def _chat(conv) -> tuple[Any, Any, Any, str | None]:
    """messages, tools, template kwargs and source of a `Conversation` or a message list."""
    return (getattr(conv, "messages", conv), getattr(conv, "tools", None),
            getattr(conv, "template_kwargs", None), getattr(conv, "source", None))


def _count_batch(batch: list, spans: ChatSpans | None = None) -> _BatchResult:
    spans = spans or _WORKER_SPANS
    res = _BatchResult(np.zeros(0, dtype=np.int64), Counter())
    windows: list = []
    owner: list[int] = []  # which counted conversation each window belongs to
    left_texts: list[str] = []
    for i, conv in enumerate(batch):
        messages, tools, kwargs, source = _chat(conv)
        try:
            sup = spans.supervise(messages, tools=tools, template_kwargs=kwargs)
        except SpanError as exc:
            res.skipped[exc.reason] += 1
            res.examples.setdefault(exc.reason, f"{source}: {exc}" if source else str(exc))
            continue
        left_texts.extend(sup.left_out)
        res.notes.update(sup.notes)
        if not sup.chats:
            res.skipped["no_prompt"] += 1
            continue
        ws = [w for chat in sup.chats for w in spans.windows(chat)]
        owner.extend([len(res.used)] * len(ws))
        windows.extend(ws)
        res.used.append(i)
    backend = spans.tokenizer.backend_tokenizer
    encodings = backend.encode_batch([w.text for w in windows] + left_texts,
                                     add_special_tokens=False)
    supervised: list[int] = []
    res.sizes = [0] * len(res.used)
    for enc, w, o in zip(encodings, windows, owner):
        for ids in spans.span_tokens(enc, w):
            supervised.extend(ids)
            res.sizes[o] += len(ids)
    if left_texts:  # each left-out turn: its text encoded alone, plus its end-of-turn token
        res.left_out["turns"] += len(left_texts)
        res.left_out["tokens"] += sum(len(e.ids) for e in encodings[len(windows):]) + (
            len(left_texts) if spans.include_eot else 0)
    res.ids = np.array(supervised, dtype=np.int64)
    return res


def _init_worker(spans: ChatSpans) -> None:
    global _WORKER_SPANS
    _WORKER_SPANS = spans
    interrupts.worker_init()  # the parent handles Ctrl-C and stops the workers
    # One tokenizer thread per worker process: the processes are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


@contextlib.contextmanager
def worker_pool(workers: int, spans: ChatSpans):
    """A fork-based process pool for counting. If the parent is interrupted (or fails), its
    workers are killed at once rather than left to finish their batches; a worker that dies
    on its own is one clear error, not a BrokenProcessPool traceback."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker, initargs=(spans,))
    try:
        yield pool
    except BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        if interrupts.received():
            raise KeyboardInterrupt from None
        raise DraftVocabError("a counting worker process died (killed, or out of memory?); "
                              "rerun with --workers 1 to see why") from None
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            with contextlib.suppress(Exception):
                p.kill()
        if manager is not None:
            # its exit closes its wakeup pipe; still running at interpreter exit, the atexit
            # hook of Python < 3.12 writes to that closed pipe (an OSError traceback)
            manager.join(timeout=5)
        del manager
        raise
    pool.shutdown(wait=True)


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
    in completion order (everything downstream sums; `_BatchResult.order` is the input
    order, for what must not depend on timing)."""
    workers = workers or os.cpu_count() or 1
    batches = enumerate(_raw_batches(conversations, batch_size))
    if workers == 1:
        for order, batch in batches:
            res = _count_batch(batch, spans)
            res.order = order
            yield batch, res
        return
    with worker_pool(workers, spans) as pool:
        pending: dict[Future, tuple[int, list]] = {}

        def result(fut: Future) -> tuple[list, _BatchResult]:
            order, batch = pending.pop(fut)
            res = fut.result()
            res.order = order
            return batch, res

        for order, batch in batches:
            pending[pool.submit(_count_batch, batch)] = (order, batch)
            if len(pending) >= 2 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield result(fut)
        for fut in as_completed(list(pending)):
            yield result(fut)


def _first_examples(examples: dict[str, tuple[int, str]], res: _BatchResult) -> None:
    """Keep, per skip reason, the example from the earliest batch (not the first finished)."""
    for reason, text in res.examples.items():
        if reason not in examples or res.order < examples[reason][0]:
            examples[reason] = (res.order, text)


def iter_supervised(conversations: Iterable, spans: ChatSpans, vocab_size: int, *,
                    batch_size: int = 64, workers: int | None = None,
                    skipped: Counter | None = None,
                    examples: dict[str, tuple[int, str]] | None = None
                    ) -> Iterator[tuple[Any, np.ndarray]]:
    """(conversation, its supervised token ids) for every usable conversation, tokenised by
    `workers` processes like `count_tokens`, in input order (so that seeded subsets of them,
    as `stability` draws, are the same on every run). For analyses that need counts per
    conversation or per group (`Conversation.group`). `skipped` and `examples` (first
    conversation per skip reason) are filled in as it goes."""
    skipped = Counter() if skipped is None else skipped
    examples = {} if examples is None else examples
    waiting: dict[int, tuple[list, _BatchResult]] = {}  # at most the batches in flight
    done = 0
    for batch, res in _counted(conversations, spans, batch_size, workers):
        waiting[res.order] = (batch, res)
        while done in waiting:
            batch, res = waiting.pop(done)
            done += 1
            check_ids(res.ids, vocab_size)
            skipped.update(res.skipped)
            _first_examples(examples, res)
            parts = np.split(res.ids, np.cumsum(res.sizes)[:-1]) if res.used else []
            yield from zip((batch[i] for i in res.used), parts)


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
    extra: dict[str, Any] = {"left_out": Counter(), "turn_notes": Counter(),
                             "skipped_examples": {}}
    conversations_counted = 0
    for _, res in _counted(conversations, spans, batch_size, workers):
        if res.ids.size:
            check_ids(res.ids, vocab_size)
            counts += np.bincount(res.ids, minlength=vocab_size)
        skipped.update(res.skipped)
        _first_examples(extra["skipped_examples"], res)
        extra["left_out"].update(res.left_out)
        extra["turn_notes"].update(res.notes)
        conversations_counted += res.conversations
        if progress:
            progress(res.conversations + sum(res.skipped.values()), res.ids.size)

    read = getattr(conversations, "stats", None)
    skipped.update(getattr(read, "skipped", None) or {})
    extra["dropped_fields"] = getattr(read, "dropped_fields", None) or {}
    return finish_counts(counts, spans, conversations_counted, skipped,
                         [dataset_fingerprint] if dataset_fingerprint else [], extra)
