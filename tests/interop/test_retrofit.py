"""Training-free retrofit: k chosen among the draft's own tokens by domain frequency, LM-head
rows sliced exactly, mapping rewritten; plus the export/import/retrofit commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.drafters import load_draft, save_draft
from draftvocab.interop.retrofit import retrofit_draft
from draftvocab.vocab.counts import TokenCounts
from draftvocab.vocab.mapping import validate_mapping
from tests.cli.test_cli import fail, ok_json
from tests.interop.test_formats import random_draft

V = 49152
KEEP = list(range(0, 400, 10))  # a 40-token draft


@pytest.fixture()
def setup(tmp_path, tiny_target):
    draft = save_draft(random_draft(tiny_target, KEEP), tmp_path / "draft")
    counts = np.zeros(V, dtype=np.int64)
    rng = np.random.default_rng(0)
    counts[KEEP] = rng.permutation(np.arange(1, 41) ** 2)  # distinct, so top-k is unambiguous
    counts[[1, 2, 3]] = 500  # frequent tokens the draft cannot emit
    return draft, counts


def _logits(draft, target):
    g = torch.Generator().manual_seed(1)
    hidden = draft.fuse(torch.randn(1, 5, 3 * target.hidden_size, generator=g))
    ids = torch.randint(0, V, (1, 5), generator=g)
    with torch.no_grad():
        return draft.step(hidden, ids, torch.arange(5)[None],
                          mask=torch.ones(5, 5, dtype=torch.bool).tril()[None, None])[0]


def test_keeps_the_most_frequent_own_tokens_and_slices_exactly(setup, tmp_path, tiny_target):
    path, counts = setup
    res = retrofit_draft(path, counts, tmp_path / "out", k=12)
    assert (res.k_before, res.k_after) == (40, 12)
    new = load_draft(tmp_path / "out", tiny_target)
    kept = (torch.arange(12) + new.d2t).tolist()
    expected = sorted(sorted(KEEP, key=lambda i: -counts[i])[:12])
    assert kept == expected
    validate_mapping(new.d2t, new.t2d, V)
    old = load_draft(path, tiny_target)
    rows = [KEEP.index(i) for i in kept]
    assert torch.equal(_logits(new, tiny_target), _logits(old, tiny_target)[..., rows])
    total = counts.sum()
    assert res.coverage_before == pytest.approx(counts[KEEP].sum() / total)
    assert res.coverage_after == pytest.approx(counts[expected].sum() / total)
    assert 0 < res.reduction_vs_before < 1


def test_optimised_k_meets_c_min_within_the_draft(setup, tmp_path):
    path, counts = setup
    reachable = counts[KEEP].sum() / counts.sum()
    res = retrofit_draft(path, counts, tmp_path / "out", c_min=0.8 * reachable, alpha=0.0)
    assert res.k_after < 40 and res.coverage_after >= 0.8 * reachable
    ranked = np.sort(counts[KEEP])[::-1]  # alpha = 0: U = R, best at the smallest feasible k
    smallest = int(np.searchsorted(np.cumsum(ranked) / counts.sum(), 0.8 * reachable) + 1)
    assert res.k_after == smallest
    with pytest.raises(DraftVocabError, match="unreachable"):
        retrofit_draft(path, counts, tmp_path / "x", c_min=min(1.0, reachable + 0.01))
    with pytest.raises(DraftVocabError, match=r"k must be in \[1, 40\]"):
        retrofit_draft(path, counts, tmp_path / "x", k=41)
    with pytest.raises(DraftVocabError, match="V=49152"):
        retrofit_draft(path, counts[:1000], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_import_retrofit_commands(setup, tmp_path, tiny_target):
    path, counts = setup
    TokenCounts(counts).save(tmp_path / "counts.safetensors")
    out = ok_json("retrofit", path, "--counts", tmp_path / "counts.safetensors", "--k", 8,
                  "--no-bench", "-o", tmp_path / "r")
    assert out["k_after"] == 8 and load_draft(tmp_path / "r", tiny_target).lm_head.out_features == 8
    exp = ok_json("export", tmp_path / "r", "--to", "speculators", "-o", tmp_path / "v")
    assert exp["draft_vocab_size"] == 8
    imp = ok_json("import", tmp_path / "v", "-o", tmp_path / "back")
    assert imp["format"] == "speculators"
    assert json.loads((tmp_path / "back" / "config.json").read_text())["draft_vocab_size"] == 8
    fr = ok_json("export", tmp_path / "counts.safetensors", "--to", "frspec", "--k", 5, "-o",
                 tmp_path / "freq.pt")
    expected = np.argsort(-counts, kind="stable")[:5].tolist()
    assert torch.load(fr["out"], weights_only=True).tolist() == expected
    fail("export", path, "--to", "onnx", "-o", tmp_path / "z", words=("--to must be one of",))
    fail("export", tmp_path / "counts.safetensors", "--to", "frspec", "-o", tmp_path / "z",
         words=("--k",))
    fail("import", tmp_path / "counts.safetensors", "-o", tmp_path / "z",
         words=("config.json",))
    fail("retrofit", path, "--counts", tmp_path / "nope", "-o", tmp_path / "z",
         words=("no such counts file",))
