"""Target features for draft training, computed once and cached on disk (fp16, memory-mapped).

A training step needs, per token: the target's three captured hidden states (the draft's input)
and the target's next-token distribution over the draft vocabulary (its labels). Computing them
is a full target forward per batch; over several epochs, or a learning-rate sweep over the same
data, that forward is paid once here instead of every step.

Per token the cache holds the fused hidden states [3h], the state entering the LM head [h] (the
labels are recomputed from it with the LM-head rows of the kept ids: k·h per token instead of
storing V logits, so one cache serves every vocabulary), both fp16, and the target's argmax id
(int32, from the full-precision logits). A target whose logits are not `lm_head(state)` (logit
soft-capping, scaling) is refused when the cache is built. The directory is written atomically
and keyed by the target, its captured layers and the exact examples; a cache for other data is
refused rather than overwritten. Data that grew (more regenerated answers appended to the
training file) reuses an earlier cache of its first conversations (`reuse`): only the new ones
cost a target forward.

    >>> cache = build_features(target, examples, "runs/features")   # or reopen it
    >>> more = build_features(target, examples + new, "runs/features-2", reuse="runs/features")
    >>> hidden, final, argmax = cache.batch([3, 7], t=256)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from draftvocab.core.atomic import atomic_directory, check_output_dir
from draftvocab.core.errors import DraftVocabError

VERSION = 1
META = "features.json"
ARRAYS = ("hidden", "final", "argmax")


def target_identity(target) -> dict:
    """What the cached numbers depend on: the model's config, a checksum of its LM head, the
    captured layers."""
    head = target.model.get_output_embeddings()
    config = target.config.to_json_string(use_diff=False)
    return {"config": hashlib.sha256(config.encode()).hexdigest()[:16],
            "lm_head_sum": round(float(head.weight.double().sum()), 3),
            "layers": list(target.layers)}


def examples_fingerprint(examples: Sequence) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(np.asarray(e.ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


@dataclass
class FeatureCache:
    """Memory-mapped per-token features of a list of examples (rows offsets[i]:offsets[i+1])."""

    path: Path
    offsets: np.ndarray  # int64 [E + 1]
    hidden: np.ndarray  # fp16 [N, 3h]
    final: np.ndarray  # fp16 [N, h]: the LM head's input
    argmax: np.ndarray  # int32 [N]: the target's argmax (target ids)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, picked: Sequence[int], t: int, device="cpu"
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of the examples `picked`, right-padded to t tokens: hidden [B, t, 3h] and
        final [B, t, h] as float32, argmax [B, t] int64 (padding rows are zeros)."""
        b = len(picked)
        hidden = np.zeros((b, t, self.hidden.shape[1]), dtype=np.float16)
        final = np.zeros((b, t, self.final.shape[1]), dtype=np.float16)
        argmax = np.zeros((b, t), dtype=np.int64)
        for row, i in enumerate(picked):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            n = min(hi - lo, t)
            hidden[row, :n] = self.hidden[lo:lo + n]
            final[row, :n] = self.final[lo:lo + n]
            argmax[row, :n] = self.argmax[lo:lo + n]
        return (torch.from_numpy(hidden).to(device, torch.float32),
                torch.from_numpy(final).to(device, torch.float32),
                torch.from_numpy(argmax).to(device))


def open_features(path: str | os.PathLike) -> FeatureCache:
    path = Path(path)
    try:
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        offsets = np.load(path / "offsets.npy")
    except (OSError, ValueError) as exc:
        raise DraftVocabError(f"cannot read the feature cache {path}: {exc}") from None
    return FeatureCache(path, offsets, **arrays)


def _head_logits(head: torch.nn.Module, state: torch.Tensor,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
    weight = head.weight if rows is None else head.weight[rows]
    bias = getattr(head, "bias", None)
    if bias is not None and rows is not None:
        bias = bias[rows]
    return F.linear(state.to(weight.dtype), weight, bias)


def kept_logits(target, final: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The target's logits over the kept ids (ascending), recomputed from cached LM-head
    inputs: [B, T, h] -> [B, T, k] float32."""
    head = target.model.get_output_embeddings()
    return _head_logits(head, final, kept.to(head.weight.device)).float()


Progress = Callable[[int, int], None]


def _reusable(reuse: str | os.PathLike, identity: dict, examples: Sequence) -> FeatureCache:
    """The cache at `reuse`, checked to hold this target's features of exactly the first
    examples (same conversations, same order, same tokens)."""
    reuse = Path(reuse)
    try:
        found = json.loads((reuse / META).read_text())
    except (OSError, ValueError):
        raise DraftVocabError(f"--reuse-features {reuse} is not a feature cache") from None
    count = found.get("count")
    if found.get("version") != VERSION or found.get("target") != identity["target"]:
        raise DraftVocabError(f"--reuse-features {reuse} holds another target's features "
                              "(or other captured layers)")
    if (not isinstance(count, int) or count > len(examples)
            or examples_fingerprint(examples[:count]) != found.get("examples")):
        raise DraftVocabError(
            f"--reuse-features {reuse} holds features of {count} conversations that are not the "
            "first ones of this data; append new conversations after the old ones, in order")
    return open_features(reuse)


def _copy_rows(earlier: FeatureCache, out: dict, n: int, chunk: int = 1 << 16) -> None:
    """The first n rows of every array, from the earlier cache, a chunk at a time (it is
    memory-mapped and may be larger than memory)."""
    for name in ARRAYS:
        src, dst = getattr(earlier, name), out[name]
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            dst[lo:hi] = src[lo:hi]


def build_features(target, examples: Sequence, path: str | os.PathLike, *,
                   reuse: str | os.PathLike | None = None, batch_tokens: int = 4096,
                   progress: Progress | None = None) -> FeatureCache:
    """Open the cache at `path` if it holds these examples' features for this target; else
    compute them (target forwards over length-sorted batches of about `batch_tokens` tokens)
    and write the cache atomically. A cache of other data or another target is an error.
    `reuse`: an earlier cache (`path` itself: grow it in place) of this target's features of
    the first examples, copied instead of recomputed."""
    path = Path(path)
    identity = {"version": VERSION, "target": target_identity(target),
                "examples": examples_fingerprint(examples), "count": len(examples)}
    check_output_dir(path)
    earlier = _reusable(reuse, identity, examples) if reuse is not None else None
    grow = earlier is not None and path.resolve() == Path(reuse).resolve()
    if (path / META).is_file():
        try:
            found = json.loads((path / META).read_text())
        except (OSError, ValueError):
            found = None
        if found == identity:
            return open_features(path)
        if not grow:
            raise DraftVocabError(
                f"{path} holds features of other data or another target; choose another "
                "--cache-features directory or remove it")
    elif path.exists() and any(path.iterdir()):
        raise DraftVocabError(f"{path} is not a feature cache and not empty; choose another "
                              "--cache-features directory")
    if not examples:
        raise DraftVocabError("no examples to compute features for")

    lengths = np.array([len(e.ids) for e in examples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n, h = int(offsets[-1]), target.hidden_size
    head = target.model.get_output_embeddings()
    if head is None:
        raise DraftVocabError("the target has no output embeddings to recompute logits from")
    captured: dict[str, torch.Tensor] = {}
    hook = head.register_forward_pre_hook(
        lambda _m, args: captured.__setitem__("state", args[0]))
    first = len(earlier) if earlier is not None else 0
    order = np.argsort(-lengths, kind="stable")
    order = order[order >= first]  # the reused examples' rows are copied, not recomputed
    done = first
    try:
        with atomic_directory(path) as tmp:
            out = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt,
                                                   shape=shape)
                   for name, dt, shape in (("hidden", np.float16, (n, 3 * h)),
                                           ("final", np.float16, (n, h)),
                                           ("argmax", np.int32, (n,)))}
            if earlier is not None:
                _copy_rows(earlier, out, int(offsets[first]))
                if progress is not None:
                    progress(done, len(examples))
            checked = False
            start = 0
            while start < len(order):
                size = max(1, batch_tokens // int(lengths[order[start]]))
                group = order[start:start + size]
                start += len(group)
                t = int(lengths[group].max())
                ids = torch.zeros((len(group), t), dtype=torch.long)
                for row, i in enumerate(group):
                    ids[row, :lengths[i]] = torch.as_tensor(examples[i].ids)
                res = target.forward(ids.to(target.device), use_cache=False)
                state = captured.pop("state")
                if not checked:  # logits must be lm_head(state), or the labels would be wrong
                    again = _head_logits(head, state)
                    scale = float(res.logits.abs().max()) or 1.0
                    if float((again - res.logits).abs().max()) > 1e-3 * scale:
                        raise DraftVocabError(
                            "this target's logits are not its LM head applied to the last "
                            "hidden state (soft-capping or scaling?); train without "
                            "--cache-features")
                    checked = True
                top = res.logits.argmax(-1).to(torch.int32).cpu().numpy()
                hid = res.hidden.to(torch.float16).cpu().numpy()
                fin = state.to(torch.float16).cpu().numpy()
                for row, i in enumerate(group):
                    lo, hi = int(offsets[i]), int(offsets[i + 1])
                    out["hidden"][lo:hi] = hid[row, :hi - lo]
                    out["final"][lo:hi] = fin[row, :hi - lo]
                    out["argmax"][lo:hi] = top[row, :hi - lo]
                done += len(group)
                if progress is not None:
                    progress(done, len(examples))
            for array in out.values():
                array.flush()
            del out
            np.save(tmp / "offsets.npy", offsets)
            (tmp / META).write_text(json.dumps(identity, indent=1))
    finally:
        hook.remove()
    return open_features(path)
