"""The Spec-Bench harness and the `generate` / `bench` commands, on a tiny random target."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from typer.testing import CliRunner

from draftvocab.cli import app
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.bench import load_questions, markdown, mean_ci, run_benchmark, t95
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.drafters import DraftConfig, Eagle3Draft, save_draft
from tests.conftest import make_tiny_target

runner = CliRunner()


@pytest.fixture(scope="module")
def target():
    return make_tiny_target(max_position_embeddings=4096, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def saved(target, tmp_path_factory):
    """The tiny target as a HF directory and a random draft checkpoint for it."""
    root = tmp_path_factory.mktemp("engine")
    target.model.save_pretrained(root / "target")
    target.tokenizer.save_pretrained(root / "target")
    torch.manual_seed(0)
    draft = Eagle3Draft(DraftConfig.for_target(target), target.model.get_input_embeddings())
    save_draft(draft, root / "draft")
    return root / "target", root / "draft"


def test_questions_pool_mt_bench_and_cut_per_category(tmp_path):
    qs = load_questions()
    cats = {q.category for q in qs}
    assert len(qs) == 480
    assert cats == {"mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"}
    assert sum(q.category == "mt_bench" for q in qs) == 80
    assert all(len(q.turns) == 2 for q in qs if q.category == "mt_bench")
    two = load_questions(per_category=2, turns=1)
    assert len(two) == 12 and all(len(q.turns) == 1 for q in two)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n')
    with pytest.raises(DraftVocabError, match=r"bad.jsonl:1: not a Spec-Bench question"):
        load_questions(bad)


def test_mean_ci_is_the_t_interval():
    m, half = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and half == pytest.approx(4.302653 * 1.0 / 3 ** 0.5, rel=1e-6)
    assert mean_ci([5.0]) == (5.0, 0.0)


def test_t95_matches_the_printed_student_t_table():
    # The table the benchmark used before scipy: the same quantiles to its three decimals.
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365,
             8: 2.306, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
    assert {df: round(t95(df), 3) for df in table} == table


def test_benchmark_rows_add_up_and_outputs_match(target):
    torch.manual_seed(0)
    draft = Eagle3Draft(DraftConfig.for_target(target), target.model.get_input_embeddings())
    variants = {"plain": SpeculativeDecoder(target),
                "eagle3": SpeculativeDecoder(target, draft, depth=3, topk=3, total_tokens=8)}
    qs = load_questions(per_category=1, turns=1)[:3]
    report = run_benchmark(target, variants, qs, max_new_tokens=6, runs=2)
    rows = report["rows"]
    assert len(rows) == 2 * 3 * 2  # runs x requests x variants
    assert report["greedy_mismatches"] == {"plain": 0, "eagle3": 0}
    overall = report["table"]["overall"]
    assert overall["plain"]["speedup"] == 1.0
    assert overall["plain"]["accept_length"][0] == pytest.approx(1.0)  # one token per forward
    assert overall["eagle3"]["requests"] == 3
    for name in variants:
        tokens = sum(r["tokens"] for r in rows if r["variant"] == name and r["run"] == 0)
        secs = sum(r["seconds"] for r in rows if r["variant"] == name and r["run"] == 0)
        per_run = [sum(r["tokens"] for r in rows if r["variant"] == name and r["run"] == k)
                   / sum(r["seconds"] for r in rows if r["variant"] == name and r["run"] == k)
                   for k in (0, 1)]
        assert overall[name]["tokens_per_s"][0] == pytest.approx(sum(per_run) / 2)
        assert tokens > 0 and secs > 0
        # decode: the tokens after the first over the time after the first token
        after = [sum(r["tokens"] - 1 for r in rows if r["variant"] == name and r["run"] == k)
                 / sum(r["seconds"] - r["ttft"] for r in rows
                       if r["variant"] == name and r["run"] == k) for k in (0, 1)]
        assert overall[name]["decode_tokens_per_s"][0] == pytest.approx(sum(after) / 2)
    assert overall["plain"]["decode_speedup"] == 1.0
    assert overall["eagle3"]["decode_speedup"] == pytest.approx(
        overall["eagle3"]["decode_tokens_per_s"][0] / overall["plain"]["decode_tokens_per_s"][0])
    text = markdown(report)
    assert "decode speed-up" in text
    assert "| **overall** | eagle3 |" in text and "Greedy outputs identical to `plain`: yes" in text


def test_cli_generate_plain_and_speculative_agree(saved):
    target_dir, draft_dir = saved
    args = ["generate", "Hello there", "--target", str(target_dir), "--max-new-tokens", "12",
            "--json"]
    plain = runner.invoke(app, args)
    spec = runner.invoke(app, [*args, "--draft", str(draft_dir)])
    adaptive = runner.invoke(app, [*args, "--draft", str(draft_dir), "--chain", "--adaptive"])
    assert plain.exit_code == 0 and spec.exit_code == 0, plain.output + spec.output
    assert adaptive.exit_code == 0, adaptive.output
    a, b = json.loads(plain.stdout), json.loads(spec.stdout)
    assert a["text"] == b["text"] == json.loads(adaptive.stdout)["text"]
    assert a["tokens"] == b["tokens"] > 0
    assert a["accept_length"] == pytest.approx(1.0) and b["draft_share"] > 0


def test_cli_bench_writes_the_report(saved, tmp_path):
    target_dir, draft_dir = saved
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--target", str(target_dir), "--draft",
                                 f"random={draft_dir}", "--adaptive-draft",
                                 f"adaptive={draft_dir}", "--per-category", "1", "--turns", "1",
                                 "--max-new-tokens", "4", "--runs", "2", "--depth", "2",
                                 "--topk", "2", "--total-tokens", "4", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["variants"] == ["plain", "random", "adaptive"] and summary["runs"] == 2
    assert not any(summary["greedy_mismatches"].values())
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md",
                                                     "throughput.png"]
    assert (out / "throughput.png").read_bytes()[:4] == b"\x89PNG"
    assert "| **overall** | random |" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, words", [
    (["generate", "hi", "--draft", "{missing}"], "not a draft checkpoint"),
    (["generate", "hi", "--max-new-tokens", "0"], "at least 1"),
    (["bench", "--draft", "nameonly"], "NAME=DIR"),
    (["bench", "--adaptive-draft", "x"], "--adaptive-draft takes NAME=DIR"),
    (["bench", "--lookup", "plain"], "--lookup takes a variant name"),
    (["bench", "--lookup", "x", "--lookup-tokens", "0"], "--lookup-tokens >= 1"),
    (["generate", "hi", "--lookup-tokens", "-1"], "lookup >= 0"),
    (["generate", "hi", "--draft", "{draft}", "--adaptive"], "needs a draft and chain"),
    (["bench", "--questions", "{missing}"], "questions not found"),
    (["generate", "hi", "--draft", "{foreign}"], "not an EAGLE-3 draft"),
])
def test_cli_bad_input_is_one_error_line(saved, tmp_path, args, words):
    from safetensors.torch import save_file

    target_dir, draft_dir = saved
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text((draft_dir / "config.json").read_text())
    save_file({"weight": torch.zeros(2)}, str(foreign / "model.safetensors"))
    subst = {"{missing}": str(tmp_path / "nope"), "{foreign}": str(foreign),
             "{draft}": str(draft_dir)}
    args = [subst.get(a, a) for a in args] + ["--target", str(target_dir)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines


def test_confidence_interval_uses_student_t_for_any_run_count():
    for n, t in [(2, 12.706), (11, 2.228), (12, 2.201), (21, 2.086), (31, 2.042)]:
        values = [float(i % 2) for i in range(n)]
        _, half = mean_ci(values)
        sd = statistics.stdev(values)
        assert half == pytest.approx(t * sd / math.sqrt(n), rel=2e-3), n


def test_cli_bench_runs_transformers_peers_beside_ours(saved, tmp_path):
    target_dir, _ = saved
    out = tmp_path / "peers"
    res = runner.invoke(app, ["bench", "--target", str(target_dir), "--peer", "prompt-lookup",
                              "--peer", "hf-generate", "--prompt-lookup-tokens", "3",
                              "--per-category", "1", "--turns", "1", "--max-new-tokens", "8",
                              "--runs", "1", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["variants"] == ["plain", "prompt-lookup", "hf-generate"]
    assert report["greedy_mismatches"] == {"plain": 0, "prompt-lookup": 0, "hf-generate": 0}
    overall = report["table"]["overall"]
    assert overall["hf-generate"]["accept_length"][0] == pytest.approx(1.0)
    assert overall["prompt-lookup"]["accept_length"][0] >= 1.0
    bad = runner.invoke(app, ["bench", "--target", str(target_dir), "--peer", "medusa",
                              "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--peer is one of hf-generate, prompt-lookup" in bad.output


def test_cli_bench_runs_lookup_rounds_with_and_without_a_draft(saved, tmp_path):
    target_dir, draft_dir = saved
    out = tmp_path / "lookup"
    res = runner.invoke(app, ["bench", "--target", str(target_dir), "--draft", f"d={draft_dir}",
                              "--draft", f"d+lookup={draft_dir}", "--lookup", "d+lookup",
                              "--lookup", "lookup", "--lookup-tokens", "3", "--chain",
                              "--gamma", "2", "--per-category", "1", "--turns", "1",
                              "--max-new-tokens", "24", "--runs", "1", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["variants"] == ["plain", "d", "d+lookup", "lookup"]
    assert not any(report["greedy_mismatches"].values())
    overall = report["table"]["overall"]
    assert overall["plain"]["lookup_share"][0] == overall["d"]["lookup_share"][0] == 0
    # a random tiny target repeats itself: copied tokens are verified (and accepted) often
    assert overall["lookup"]["lookup_share"][0] > 0 and overall["d+lookup"]["lookup_share"][0] > 0
    assert overall["lookup"]["accept_length"][0] > 1 and overall["lookup"]["draft_share"][0] == 0
