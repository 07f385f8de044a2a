"""Cached target features: the same labels as a live target forward (up to fp16), training
from the cache tracks training without it, reuse is keyed by data and target, and a target
whose logits are not lm_head(state) is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from draftvocab.cli import app
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.features import build_features, kept_logits
from draftvocab.engine.labels import kept_targets, ttt_targets
from draftvocab.engine.train import TrainConfig, collate, train_draft
from tests.conftest import make_peaked_target
from tests.engine.test_train import (  # noqa: F401  (fixtures)
    data_file,
    examples,
    half_mapping,
    hf_target_dir,
)


@pytest.fixture(scope="module")
def target():
    return make_peaked_target()


def _tensors(m):
    return torch.tensor(m.d2t, dtype=torch.long), torch.tensor(m.t2d, dtype=torch.bool)


def test_cached_labels_equal_live_labels(target, examples, half_mapping, tmp_path):  # noqa: F811
    cache = build_features(target, examples, tmp_path / "f", batch_tokens=100)
    assert len(cache) == len(examples) and cache.final.dtype == np.float16
    _, t2d = _tensors(half_mapping)
    picked = [2, 0, 3]
    batch = collate([examples[i] for i in picked])
    live = target.forward(batch.ids, use_cache=False)
    hidden, final, argmax = cache.batch(picked, batch.ids.shape[1])
    real = batch.supervised | (torch.arange(batch.ids.shape[1]) < batch.lengths[:, None])
    assert torch.equal(argmax[real], live.logits.argmax(-1)[real])
    assert torch.allclose(hidden[real], live.hidden[real], atol=2e-3, rtol=2e-3)
    kept = torch.nonzero(t2d).flatten()
    a = ttt_targets(live.logits, batch, t2d, 3)
    b = kept_targets(kept_logits(target, final, kept), argmax, batch, t2d, 3)
    assert torch.equal(a.argmax, b.argmax)
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))
    m = a.masks[0]
    assert torch.allclose(a.probs[m], b.probs[m], atol=2e-2)


def test_training_from_the_cache_tracks_live_training(
        target, examples, half_mapping, tmp_path):  # noqa: F811
    d2t, t2d = _tensors(half_mapping)
    config = TrainConfig(ttt_steps=2, batch_size=2, lr=3e-3, max_len=128, max_steps=6,
                         warmup_steps=1)
    cache = build_features(target, examples, tmp_path / "f")
    live = train_draft(target, examples, tmp_path / "live", d2t=d2t, t2d=t2d, config=config)
    cached = train_draft(target, examples, tmp_path / "cached", d2t=d2t, t2d=t2d,
                         config=config, features=cache)
    a = json.loads((tmp_path / "live" / "train_log.json").read_text())["steps"]
    b = json.loads((tmp_path / "cached" / "train_log.json").read_text())["steps"]
    assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], rel=2e-2)
    assert a[-1]["loss"] < a[0]["loss"]
    assert live.steps == cached.steps == 6


def test_reuse_is_keyed_by_data_and_target(target, examples, tmp_path, monkeypatch):  # noqa: F811
    build_features(target, examples, tmp_path / "f")
    before = (tmp_path / "f" / "hidden.npy").stat().st_mtime_ns

    def no_forward(*_a, **_k):
        raise AssertionError("the cache was recomputed")

    monkeypatch.setattr(target, "forward", no_forward)
    again = build_features(target, examples, tmp_path / "f")
    assert len(again) == len(examples)
    assert (tmp_path / "f" / "hidden.npy").stat().st_mtime_ns == before
    with pytest.raises(DraftVocabError, match="other data or another target"):
        build_features(target, examples[:2], tmp_path / "f")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("mine")
    with pytest.raises(DraftVocabError, match="not a feature cache"):
        build_features(target, examples, tmp_path / "junk")
    assert (tmp_path / "junk" / "x").read_text() == "mine"


def test_soft_capped_logits_are_refused(examples, tmp_path):  # noqa: F811
    capped = make_peaked_target()
    capped.model.lm_head.register_forward_hook(lambda _m, _i, out: 30 * torch.tanh(out / 30))
    with pytest.raises(DraftVocabError, match="not its LM head"):
        build_features(capped, examples, tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_cli_train_with_cache_and_heldout(hf_target_dir, data_file, tmp_path):  # noqa: F811
    out, cache = tmp_path / "draft", tmp_path / "features"
    args = ["train", str(data_file), "--target", str(hf_target_dir), "--max-steps", "4",
            "--batch-size", "2", "--ttt-steps", "2", "--max-len", "64",
            "--cache-features", str(cache), "--eval-data", str(data_file),
            "--eval-every", "2", "--eval-gamma", "2", "--json"]
    r = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["heldout"]["gamma"] == 2 and summary["heldout"]["tau"] >= 1.0
    log = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in log["eval"]] == [0, 2, 4]
    assert log["eval"][-1]["tokens"] == log["steps"][-1]["tokens"] > 0
    assert (out / "training.png").stat().st_size > 1000
    assert (cache / "features.json").is_file()
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "again")])  # reuses the cache
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["final_loss"] == pytest.approx(summary["final_loss"])


def test_grown_data_reuses_the_cache_of_its_first_conversations(
        target, examples, tmp_path, monkeypatch):  # noqa: F811
    whole = build_features(target, examples, tmp_path / "whole")
    first = build_features(target, examples[:2], tmp_path / "first")
    forwarded: list[int] = []
    live = target.forward

    def counting(ids, **kw):
        forwarded.append(ids.shape[0])
        return live(ids, **kw)

    monkeypatch.setattr(target, "forward", counting)
    grown = build_features(target, examples, tmp_path / "grown", reuse=tmp_path / "first")
    assert sum(forwarded) == 2  # only the two new conversations met the target
    n = int(first.offsets[-1])
    assert np.array_equal(grown.offsets, whole.offsets)
    for name in ("hidden", "final", "argmax"):
        assert np.array_equal(getattr(grown, name)[:n], getattr(first, name))
        assert np.allclose(getattr(grown, name), getattr(whole, name), atol=2e-3)
    assert json.loads((tmp_path / "grown" / "features.json").read_text()) == json.loads(
        (tmp_path / "whole" / "features.json").read_text())  # train opens it as its own
    forwarded.clear()
    again = build_features(target, examples, tmp_path / "first", reuse=tmp_path / "first")
    assert sum(forwarded) == 2 and len(again) == 4  # grown in place
    assert np.array_equal(np.asarray(again.argmax), np.asarray(grown.argmax))


def test_reuse_refuses_a_cache_that_is_not_the_first_conversations(
        target, examples, tmp_path):  # noqa: F811
    build_features(target, examples[1:3], tmp_path / "middle")
    with pytest.raises(DraftVocabError, match="not the first ones of this data"):
        build_features(target, examples, tmp_path / "out", reuse=tmp_path / "middle")
    with pytest.raises(DraftVocabError, match="not a feature cache"):
        build_features(target, examples, tmp_path / "out", reuse=tmp_path / "nowhere")
    other = make_peaked_target()
    other.layers = (0, 1, 1)
    with pytest.raises(DraftVocabError, match="another target"):
        build_features(other, examples, tmp_path / "out", reuse=tmp_path / "middle")
    assert not (tmp_path / "out").exists()


def test_cli_reuse_features_needs_a_cache(hf_target_dir, data_file, tmp_path):  # noqa: F811
    r = CliRunner().invoke(app, ["train", str(data_file), "--target", str(hf_target_dir),
                                 "--reuse-features", str(tmp_path / "f"), "-o",
                                 str(tmp_path / "draft")])
    assert r.exit_code != 0 and "needs --cache-features" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "draft").exists()
