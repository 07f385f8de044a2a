"""The counts artefact: supervised-token frequencies and exactly what they were counted from.

Owns the on-disk format: one `.safetensors` file holding `counts` (int64[V], V = the target
config's vocab_size) and a JSON metadata string (tokenizer and template hashes, supervision
rule, dataset fingerprints, sample and token counts, skip reasons, token strings). No
timestamps: counting the same input twice gives byte-identical files. Also merging shards and
building the metadata (`finish_counts`) whichever engine counted. Counting itself is
`counts.py`'s (one machine) and `scaleout.py`'s (Ray).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from draftvocab.chat.spans import ChatSpans
from draftvocab.core.assets import sha256_text, tokenizer_fingerprint
from draftvocab.core.atomic import atomic_write
from draftvocab.core.errors import DraftVocabError
from draftvocab.core.version import __version__

FORMAT = "draftvocab.vocab.counts/1"


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

    def token_strings(self, ids) -> list[str | None]:
        """The tokenizer's strings of `ids`, as recorded when counting (None for an id never
        counted, or a file from before strings were recorded)."""
        table = self.metadata.get("tokens") or {}
        return [table.get(str(int(i))) for i in ids]

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


def _rule(meta: dict) -> dict:
    """The supervision rule of a counts file; files from before the rule existed counted
    assistant content (+ end-of-turn token) of every assistant turn."""
    return {"supervise": meta.get("supervise", "content"),
            "leading_assistant": meta.get("leading_assistant", "keep"),
            "include_eot": meta.get("include_eot")}


def merge_counts(parts: Iterable[TokenCounts]) -> TokenCounts:
    """Sum counts from several shards counted with the same tokenizer, template, rule and V."""
    parts = list(parts)
    if not parts:
        raise DraftVocabError("nothing to merge")
    keys = ("vocab_size", "tokenizer", "chat_template", "supervise", "leading_assistant",
            "include_eot")
    first = parts[0]

    def value(p: TokenCounts, k: str):
        return p.vocab_size if k == "vocab_size" else {**p.metadata, **_rule(p.metadata)}.get(k)

    for p in parts[1:]:
        for k in keys:
            if value(first, k) != value(p, k):
                raise DraftVocabError(f"cannot merge counts with different {k}: "
                                      f"{value(first, k)} vs {value(p, k)}")
    meta = {k: value(first, k) for k in keys if k != "vocab_size"}
    meta["template_kwargs"] = first.metadata.get("template_kwargs")
    meta.update(
        datasets=[d for p in parts for d in p.metadata.get("datasets", [])],
        conversations=sum(p.metadata.get("conversations", 0) for p in parts),
        supervised_tokens=sum(p.metadata.get("supervised_tokens", 0) for p in parts),
        draftvocab_version=__version__,
    )
    for k in ("skipped", "left_out", "turn_notes", "dropped_fields"):
        total: Counter[str] = Counter()
        for p in parts:
            total.update(p.metadata.get(k) or {})
        meta[k] = dict(sorted(total.items()))
    tokens = {}
    for p in parts:
        tokens.update(p.metadata.get("tokens") or {})
    if tokens:
        meta["tokens"] = dict(sorted(tokens.items(), key=lambda kv: int(kv[0])))
    counts = np.sum([p.counts for p in parts], axis=0, dtype=np.int64)
    return TokenCounts(counts=counts, metadata=meta)


def finish_counts(counts: np.ndarray, spans: ChatSpans, conversations: int, skipped: Counter,
                  datasets: list[dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> TokenCounts:
    """The counts artefact with its metadata (tokenizer and template identity, the rule and
    template arguments, inputs, skips, left-out turns), whichever engine counted. It carries
    the token strings of every counted id, so `optimize --counts` needs no tokenizer."""
    extra = extra or {}
    if conversations == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "no records"
        examples = {k: v[1] if isinstance(v, tuple) else v
                    for k, v in extra.get("skipped_examples", {}).items()}
        first = "; ".join(f"{k}: {v}" for k, v in sorted(examples.items()))
        raise DraftVocabError(f"no usable conversations to count ({reasons})"
                              + (f"; first: {first}" if first else ""))
    tok = spans.tokenizer
    seen = np.flatnonzero(counts)
    n_tok = len(tok)
    strings = tok.convert_ids_to_tokens([int(i) for i in seen if i < n_tok])
    metadata = {
        "tokenizer": tokenizer_fingerprint(tok),
        "chat_template": {"sha256": sha256_text(tok.chat_template)},
        "template_kwargs": spans.template_kwargs,
        **spans.rule,
        "datasets": datasets,
        "conversations": conversations,
        "supervised_tokens": int(counts.sum()),
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": {k: v[1] if isinstance(v, tuple) else v
                             for k, v in sorted(extra.get("skipped_examples", {}).items())},
        "left_out": dict(sorted(extra.get("left_out", {}).items())),
        "turn_notes": dict(sorted(extra.get("turn_notes", {}).items())),
        "dropped_fields": dict(sorted(extra.get("dropped_fields", {}).items())),
        "tokens": {str(int(i)): t for i, t in zip(seen, strings)},
        "draftvocab_version": __version__,
    }
    return TokenCounts(counts=counts, metadata=metadata)
