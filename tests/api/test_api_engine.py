"""The engine's library calls (`draftvocab.api.training / decoding / measure`) on a tiny random
target: each does the whole job of its command and returns what the command prints."""

from __future__ import annotations

import json
import threading

import httpx2
import pytest
import torch

from draftvocab.api.decoding import bench, generate, serve
from draftvocab.api.measure import calibrate, latency
from draftvocab.api.training import regenerate, train
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.decode import DecodeOptions, SpeculativeDecoder
from draftvocab.engine.drafters import DraftConfig, Eagle3Draft, load_draft, save_draft
from draftvocab.engine.train import TrainConfig
from tests.conftest import make_tiny_target

RECORDS = [{"id": f"c{i}", "messages": [
    {"role": "user", "content": f"Name {i} colours."},
    {"role": "assistant", "content": "Red, green and blue are colours."}]} for i in range(4)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny target as a HF directory, a random EAGLE-3 draft for it, and a dataset."""
    root = tmp_path_factory.mktemp("api-engine")
    target = make_tiny_target(max_position_embeddings=4096, tie_word_embeddings=False)
    target.model.save_pretrained(root / "target")
    target.tokenizer.save_pretrained(root / "target")
    torch.manual_seed(0)
    save_draft(Eagle3Draft(DraftConfig.for_target(target), target.model.get_input_embeddings()),
               root / "draft")
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return target, root / "target", root / "draft", data


class Recorder:
    """A progress callback (`api.inputs.Progress`) that keeps every report."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, stage, advance, total=None, tokens=0):
        self.calls.append((stage, advance, total, tokens))

    def done(self, stage: str) -> int:
        return sum(a for s, a, _, _ in self.calls if s == stage)


def test_generate_greedy_is_the_targets_own_answer(saved):
    target, target_dir, draft_dir, _ = saved
    ids = target.prompt_ids([{"role": "user", "content": "hi"}])
    own = SpeculativeDecoder(target).generate(ids, 6).tokens
    plain = generate("hi", target=target_dir, max_new_tokens=6)
    spec = generate("hi", target=target_dir, draft=draft_dir, max_new_tokens=6,
                    decoding=DecodeOptions(tree=False, gamma=2))
    assert plain.text == spec.text == target.tokenizer.decode(own, skip_special_tokens=True)
    assert plain.tokens == spec.tokens == len(own)
    assert plain.draft_forwards == 0 < spec.draft_forwards
    assert list(spec.to_json()) == ["text", "tokens", "seconds", "tokens_per_s",
                                    "accept_length", "target_forwards", "draft_forwards",
                                    "draft_share"]
    with pytest.raises(DraftVocabError, match="at least 1"):
        generate("hi", target=target_dir, max_new_tokens=0)


def test_bench_writes_the_report_it_returns(saved, tmp_path):
    _, target_dir, draft_dir, _ = saved
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": c, "turns": [q]}) + "\n"
                                 for i, (c, q) in enumerate([("qa", "Why?"), ("math", "1+1?")])))
    progress = Recorder()
    r = bench(drafts=[f"d={draft_dir}"], adaptive_drafts=[f"a={draft_dir}"], target=target_dir,
              questions=questions, max_new_tokens=4, runs=1, out=tmp_path / "b",
              progress=progress)
    summary = r.to_json()
    assert "rows" not in summary and summary["out"] == str(tmp_path / "b")
    written = json.loads((tmp_path / "b" / "report.json").read_text())
    assert written == json.loads(json.dumps(r.report))
    assert r.markdown() == (tmp_path / "b" / "report.md").read_text()
    assert progress.calls[0][:3] == ("benchmark", 0, 2)
    assert progress.done("benchmark") == 2
    assert set(summary["table"]["qa"]) == {"plain", "d", "a"}
    with pytest.raises(DraftVocabError, match="'plain' is taken"):
        bench(drafts=[f"plain={draft_dir}"], target=target_dir, out=tmp_path / "x")
    with pytest.raises(DraftVocabError, match="--peer is one of"):
        bench(peers=["medusa"], target=target_dir, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_tree_drafts_decode_as_trees_beside_chains(saved, tmp_path):
    """--tree-draft: one run compares a chain and a tree of the same draft, both lossless."""
    from draftvocab.api.decoding import _variants

    target, target_dir, draft_dir, _ = saved
    chain = DecodeOptions(tree=False, gamma=2, depth=2, topk=2, total_tokens=3)
    variants = _variants(target, [("c", draft_dir), ("t", draft_dir)], set(), None, [], 10,
                         chain, ["t"], 2, trees={"t"})
    assert (variants["c"].tree, variants["t"].tree) == (False, True)
    assert (variants["t"].total_tokens, variants["t"].lookup, variants["c"].lookup) == (3, 2, 0)
    r = bench(drafts=[f"c={draft_dir}"], tree_drafts=[f"t={draft_dir}"], target=target_dir,
              per_category=1, turns=1, max_new_tokens=6, runs=1, decoding=chain,
              out=tmp_path / "b")
    assert r.to_json()["variants"] == ["plain", "c", "t"]
    assert not any(r.report["greedy_mismatches"].values())
    with pytest.raises(DraftVocabError, match="'c' is taken"):
        bench(drafts=[f"c={draft_dir}"], tree_drafts=[f"c={draft_dir}"], target=target_dir,
              out=tmp_path / "x")
    with pytest.raises(DraftVocabError, match="run in-process: drop --no-local"):
        bench(tree_drafts=[f"t={draft_dir}"], endpoints=["http://127.0.0.1:9/v1"],
              local=False, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_regenerate_writes_resumes_and_reports(saved, tmp_path):
    _, target_dir, _, data = saved
    out = tmp_path / "regen.jsonl"
    progress = Recorder()
    r = regenerate(data, out=out, target=str(target_dir), max_new_tokens=6, progress=progress)
    assert r.stats.written == len(RECORDS) and r.target == str(target_dir)
    lines = out.read_text().splitlines()
    assert len({json.loads(x)["id"] for x in lines}) == len(RECORDS)
    assert all(json.loads(x)["messages"][0] == RECORDS[0]["messages"][0] for x in lines[:1])
    assert progress.calls[0][:2] == ("regenerating", 0)
    assert progress.done("regenerating") == len(RECORDS)
    assert sum(c[3] for c in progress.calls) == r.stats.generated_tokens
    summary = r.to_json()
    assert summary["out"] == str(out) and "endpoint" not in summary
    again = regenerate(data, out=out, target=str(target_dir), max_new_tokens=6)
    assert again.stats.already_done == len(RECORDS) and again.stats.written == 0
    with pytest.raises(DraftVocabError, match="nothing was regenerated: skipped too_long"):
        regenerate(data, out=tmp_path / "none.jsonl", target=str(target_dir),
                   max_prompt_tokens=2)
    with pytest.raises(DraftVocabError, match="--concurrency"):
        regenerate(data, out=out, concurrency=0)


def test_train_runs_the_whole_pipeline(saved, tmp_path):
    target, target_dir, _, data = saved
    steps, progress = [], Recorder()
    run = train(data, target=str(target_dir), out=tmp_path / "draft",
                config=TrainConfig(max_steps=2, max_len=64, batch_size=2, ttt_steps=2),
                cache_features=tmp_path / "features", eval_data=data, eval_samples=2,
                progress=progress, on_step=lambda step, total, entry: steps.append(step))
    assert run.result.steps == 2 and steps == [1, 2]
    assert progress.done("target features") == run.result.examples == len(RECORDS)
    assert ("training", 0, None, 0) in progress.calls
    assert run.result.heldout is not None and run.result.heldout["gamma"] == 3
    summary = run.to_json()
    assert summary["target"] == str(target_dir) and summary["mapping"] is None
    assert load_draft(tmp_path / "draft", target).config.draft_vocab_size == target.vocab_size
    with pytest.raises(DraftVocabError, match="--eval-samples"):
        train(data, target=str(target_dir), out=tmp_path / "x", eval_gamma=0)


def test_latency_and_calibrate_write_what_they_return(saved, tmp_path):
    _, target_dir, draft_dir, _ = saved
    progress = Recorder()
    lat = latency(config=target_dir / "config.json", ks="100,2000", repeats=2,
                  out=tmp_path / "lat", progress=progress)
    assert lat.data["ks"] == [100, 2000] and len(lat.flops_reduction) == 2
    assert 0 < lat.flops_reduction[0] < 1 and lat.flops_reduction[1] < lat.flops_reduction[0]
    assert json.loads((tmp_path / "lat" / "latency.json").read_text()) == lat.data
    assert (tmp_path / "lat" / "latency.png").is_file()
    assert progress.done("timing draft forwards") == 2
    with pytest.raises(DraftVocabError, match="--ks must be draft vocabulary sizes"):
        latency(config=target_dir / "config.json", ks=[0], out=tmp_path / "x")
    cal = calibrate(draft_dir, target=target_dir, per_category=1, max_new_tokens=3,
                    out=tmp_path / "cal.json")
    written = json.loads((tmp_path / "cal.json").read_text())
    assert written == {k: v for k, v in cal.to_json().items() if k != "out"}
    assert len(cal.alphas) == cal.gamma == 2 and cal.rounds > 0


def test_serve_answers_until_stopped(saved):
    _, target_dir, _, _ = saved
    ready = threading.Event()
    box: dict = {}

    def on_ready(s):
        box["server"] = s
        ready.set()

    thread = threading.Thread(target=lambda: box.update(result=serve(
        target=str(target_dir), port=0, model_name="tiny", max_tokens=4, on_ready=on_ready)))
    thread.start()
    try:
        assert ready.wait(120)
        s = box["server"]
        reply = httpx2.post(f"{s.url}/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] <= 4
    finally:
        if "server" in box:
            box["server"].stop()
        thread.join(60)
    assert box["result"].served == 1 and box["result"].stop_signal is None
    with pytest.raises(DraftVocabError, match="--port in"):
        serve(target=str(target_dir), port=70000)
