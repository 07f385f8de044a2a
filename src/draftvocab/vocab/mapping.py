"""Draft ↔ target vocabulary mapping in the SpecForge / SGLang EAGLE-3 format.

Owns `d2t` (int64[k] offsets: draft index i is target id i + d2t[i], ids ascending) and
`t2d` (bool[V]: which target ids the draft can emit), their invariants, and the files they
travel in (`vocab_mapping.pt`, `.safetensors`, a readable `draft_vocab.json`). Which k to
use is `optimize`'s decision; this module only turns ids into a valid mapping.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from draftvocab.core.atomic import atomic_write
from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.objective import frequency_order

PT_NAME = "vocab_mapping.pt"
SAFETENSORS_NAME = "vocab_mapping.safetensors"
JSON_NAME = "draft_vocab.json"


def _to_numpy(x: Any) -> np.ndarray:
    # Accept torch tensors without importing torch here (it is slow to import).
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def validate_mapping(d2t: Any, t2d: Any, vocab_size: int | None = None) -> None:
    """Raise DraftVocabError naming the first broken invariant of a (d2t, t2d) pair.

    A mapping that passes makes EAGLE-3's `draft_index + d2t[draft_index]` land on exactly
    the target ids that `t2d` marks, in ascending order.

    Example:
        >>> validate_mapping(np.array([2, 2], dtype=np.int64), np.array([0, 0, 1, 1], bool))
    """
    d2t, t2d = _to_numpy(d2t), _to_numpy(t2d)
    if d2t.ndim != 1 or d2t.dtype != np.int64:
        raise DraftVocabError(
            f"d2t must be a 1-D int64 array, got {d2t.dtype} with shape {d2t.shape}"
        )
    if t2d.ndim != 1 or t2d.dtype != np.bool_:
        raise DraftVocabError(
            f"t2d must be a 1-D bool array, got {t2d.dtype} with shape {t2d.shape}"
        )
    k, vocab = d2t.size, t2d.size
    if vocab_size is not None and vocab != vocab_size:
        raise DraftVocabError(f"t2d has length {vocab} but the target vocab_size is {vocab_size}")
    if not 1 <= k <= vocab:
        raise DraftVocabError(f"d2t has {k} entries; the draft vocab size must be in [1, {vocab}]")
    ids = d2t + np.arange(k, dtype=np.int64)
    bad = np.flatnonzero((ids < 0) | (ids >= vocab))
    if bad.size:
        i = int(bad[0])
        raise DraftVocabError(
            f"draft ids out of range: draft index {i} maps to target id {int(ids[i])}, "
            f"outside [0, {vocab})"
        )
    bad = np.flatnonzero(np.diff(ids) <= 0)
    if bad.size:
        i = int(bad[0])
        raise DraftVocabError(
            f"draft ids are not strictly ascending: draft index {i + 1} maps to "
            f"{int(ids[i + 1])} after {int(ids[i])}"
        )
    marked = int(t2d.sum())
    if marked != k:
        raise DraftVocabError(f"t2d marks {marked} target ids but d2t has {k} entries")
    bad = np.flatnonzero(np.flatnonzero(t2d) != ids)
    if bad.size:
        i = int(bad[0])
        raise DraftVocabError(
            f"t2d disagrees with d2t at draft index {i}: d2t gives target id {int(ids[i])}, "
            f"t2d marks {int(np.flatnonzero(t2d)[i])}"
        )


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly, not with ==
class VocabMapping:
    """A validated, read-only draft vocabulary mapping.

    Example:
        >>> m = mapping_from_ids([7, 2, 5], vocab_size=10)
        >>> m.draft_ids, m.d2t
        (array([2, 5, 7]), array([2, 4, 5]))
    """

    d2t: np.ndarray
    t2d: np.ndarray

    def __post_init__(self) -> None:
        d2t, t2d = _to_numpy(self.d2t), _to_numpy(self.t2d)
        validate_mapping(d2t, t2d)
        # Private read-only copies: a frozen mapping must not change under its caller's feet.
        for name, arr in (("d2t", d2t), ("t2d", t2d)):
            arr = arr.copy()
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    @property
    def k(self) -> int:
        """Draft vocabulary size."""
        return int(self.d2t.size)

    @property
    def vocab_size(self) -> int:
        """Target vocabulary size V."""
        return int(self.t2d.size)

    @property
    def draft_ids(self) -> np.ndarray:
        """Target id of each draft index, ascending."""
        return self.d2t + np.arange(self.k, dtype=np.int64)


def mapping_from_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> VocabMapping:
    """Mapping for an explicit set of target ids (any order, no duplicates).

    Example:
        >>> mapping_from_ids([3, 0], vocab_size=4).t2d
        array([ True, False, False,  True])
    """
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.size == 0:
        raise DraftVocabError(f"draft ids must be a non-empty 1-D list, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise DraftVocabError(f"draft ids must be integers, got dtype {arr.dtype}")
    if vocab_size < 1:
        raise DraftVocabError(f"vocab_size must be positive, got {vocab_size}")
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
        raise DraftVocabError(f"draft id {int(bad[0])} is outside [0, {vocab_size})")
    ids_sorted = np.sort(arr.astype(np.int64))
    dup = np.flatnonzero(np.diff(ids_sorted) == 0)
    if dup.size:
        raise DraftVocabError(f"draft id {int(ids_sorted[dup[0]])} appears more than once")
    t2d = np.zeros(vocab_size, dtype=np.bool_)
    t2d[ids_sorted] = True
    return VocabMapping(d2t=ids_sorted - np.arange(ids_sorted.size, dtype=np.int64), t2d=t2d)


def build_mapping(counts: np.ndarray, k: int) -> VocabMapping:
    """Mapping for the k most frequent tokens (ties to the lower id), V = len(counts).

    Example:
        >>> build_mapping(np.array([5, 0, 9, 1]), 2).draft_ids
        array([0, 2])
    """
    counts = np.asarray(counts)
    vocab = counts.size
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= vocab:
        raise DraftVocabError(f"k must be in [1, V={vocab}], got {k}")
    return mapping_from_ids(frequency_order(counts)[: int(k)], vocab)


def _decode_texts(decode: Callable[[list[int]], list[str]], ids: list[int]) -> list[str]:
    texts = list(decode(ids))
    if len(texts) != len(ids):
        raise DraftVocabError(f"decode returned {len(texts)} strings for {len(ids)} token ids")
    return [str(t) for t in texts]


def write_mapping_files(
    directory: str | os.PathLike,
    mapping: VocabMapping,
    *,
    counts: np.ndarray | None = None,
    decode: Callable[[list[int]], list[str]] | None = None,
) -> list[Path]:
    """Write `vocab_mapping.pt`, `vocab_mapping.safetensors` and `draft_vocab.json`.

    The `.pt` holds exactly SpecForge's `{"d2t": int64, "t2d": bool}` tensors; the JSON lists
    the draft tokens by id, with text (from `decode`) and count when given, for humans.

    Example:
        >>> write_mapping_files("out", build_mapping(counts, 13264), decode=tok.convert_ids_to_tokens)
    """
    import safetensors.torch
    import torch

    validate_mapping(mapping.d2t, mapping.t2d)
    directory = Path(directory)
    ids = mapping.draft_ids.tolist()
    token_counts: list[Any] = [None] * mapping.k
    if counts is not None:
        counts = np.asarray(counts)
        if counts.shape != (mapping.vocab_size,):
            raise DraftVocabError(
                f"counts has shape {counts.shape}, expected ({mapping.vocab_size},)"
            )
        token_counts = counts[mapping.draft_ids].tolist()
    texts: list[Any] = _decode_texts(decode, ids) if decode is not None else [None] * mapping.k
    tensors = {
        "d2t": torch.from_numpy(mapping.d2t.copy()),
        "t2d": torch.from_numpy(mapping.t2d.copy()),
    }
    buf = io.BytesIO()
    torch.save(tensors, buf)
    vocab_json = {
        "vocab_size": mapping.vocab_size,
        "draft_vocab_size": mapping.k,
        "tokens": [{"id": i, "text": t, "count": c} for i, t, c in zip(ids, texts, token_counts)],
    }
    return [
        atomic_write(directory / PT_NAME, buf.getvalue()),
        atomic_write(directory / SAFETENSORS_NAME, safetensors.torch.save(tensors)),
        atomic_write(
            directory / JSON_NAME, json.dumps(vocab_json, ensure_ascii=False, indent=1) + "\n"
        ),
    ]


def load_tensor_file(path: Path) -> Any:
    """Tensors from `.safetensors`, or from `.pt`/`.bin` with `torch.load(weights_only=True)`:
    anything that needs arbitrary unpickling is refused, never executed."""
    import torch

    if path.suffix in (".pt", ".bin"):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DraftVocabError(
                f"refusing to load {path}: not a weights-only file ({first})"
            ) from None
        except (RuntimeError, EOFError, ValueError, OSError) as exc:
            raise DraftVocabError(f"cannot read {path} as a torch file: {exc}") from None
    if path.suffix == ".safetensors":
        import safetensors
        import safetensors.torch

        try:
            return safetensors.torch.load(path.read_bytes())
        except OSError as exc:
            raise DraftVocabError(f"cannot read {path}: {exc.strerror}") from None
        except safetensors.SafetensorError as exc:
            raise DraftVocabError(f"cannot read {path} as safetensors: not a readable "
                                  f"safetensors file ({exc})") from None
    raise DraftVocabError(f"unsupported tensor file {path}: expected .safetensors, .pt or .bin")


def load_mapping(path: str | os.PathLike, vocab_size: int | None = None) -> VocabMapping:
    """Load and validate a `.pt` or `.safetensors` mapping (a directory: the one inside it).

    `.pt` files are read with `weights_only=True`: a mapping is two tensors, so anything that
    needs arbitrary unpickling is refused rather than executed.

    Example:
        >>> load_mapping("out/vocab_mapping.pt", vocab_size=128256).k
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / SAFETENSORS_NAME, path / PT_NAME]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise DraftVocabError(f"no {SAFETENSORS_NAME} or {PT_NAME} in {path}")
        path = found[0]
    if not path.is_file():
        raise DraftVocabError(f"mapping file not found: {path}")
    if path.suffix not in (".pt", ".safetensors"):
        raise DraftVocabError(f"unsupported mapping file {path}: expected .pt or .safetensors")
    data = load_tensor_file(path)
    if not isinstance(data, dict):
        raise DraftVocabError(
            f"{path} holds a {type(data).__name__}, expected a dict with 'd2t' and 't2d'"
        )
    missing = [key for key in ("d2t", "t2d") if key not in data]
    if missing:
        raise DraftVocabError(f"{path} has no {' or '.join(repr(m) for m in missing)} key")
    d2t, t2d = _to_numpy(data["d2t"]), _to_numpy(data["t2d"])
    try:
        validate_mapping(d2t, t2d, vocab_size)
    except DraftVocabError as exc:
        raise DraftVocabError(f"{path}: {exc}") from None
    return VocabMapping(d2t=d2t, t2d=t2d)
