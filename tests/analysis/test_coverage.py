"""Coverage tables, missing tokens, stability and the α × c_min sweep: numbers checked on small
hand-made data, and the analysis commands end to end on real tokenizers and templates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from draftvocab.analysis.coverage import coverage_row, coverage_table, missing_tokens
from draftvocab.analysis.stability import SparseCounts, stability, sweep
from draftvocab.chat.conversations import ColumnMap, read_conversations
from draftvocab.chat.spans import ChatSpans
from draftvocab.vocab.counts import count_by_group, count_tokens, iter_supervised
from draftvocab.vocab.flops import flops_breakdown
from draftvocab.vocab.objective import make_objective
from draftvocab.vocab.optimize import optimize_objective
from tests.cli.test_cli import EXPLICIT, LLAMA_CONFIG, fail, ok_json

T2D = np.array([1, 1, 0, 1, 0, 0], dtype=bool)  # ids 0, 1, 3 in the vocabulary


def test_coverage_by_hand():
    counts = np.array([5, 0, 3, 2, 0, 10])
    row = coverage_row("x", counts, T2D)
    # weighted: (5 + 0 + 2) / 20; unique: seen {0, 2, 3, 5}, in vocabulary {0, 3}
    assert (row.tokens, row.coverage, row.unique_tokens, row.unique_coverage) == (20, 0.35, 4, 0.5)
    rows = coverage_table({"b": counts, "a": np.array([1, 1, 0, 0, 0, 0])}, T2D,
                          train={"a": np.array([3, 0, 0, 0, 0, 0]), "b": np.array([1, 0, 0, 0, 0, 0])})
    assert [r.name for r in rows] == ["a", "b", "all"]
    assert rows[0].coverage == 1.0 and rows[0].unique_coverage == 1.0
    assert rows[2].tokens == 22 and rows[2].coverage == pytest.approx(9 / 22)
    assert [r.train_share for r in rows] == [0.75, 0.25, 1.0]


def test_missing_tokens_by_hand():
    counts = np.array([5, 0, 3, 2, 3, 10])
    got = missing_tokens(counts, T2D, top=5, decode=lambda ids: [f"t{i}" for i in ids])
    assert [(m.id, m.text, m.count) for m in got] == [(5, "t5", 10), (2, "t2", 3), (4, "t4", 3)]
    assert got[0].share == pytest.approx(10 / 23)
    assert missing_tokens(counts, np.ones(6, bool)) == []


def test_sparse_subsets_equal_dense_sums():
    rng = np.random.default_rng(0)
    convs = [rng.integers(0, 50, rng.integers(0, 30)) for _ in range(40)]
    data = SparseCounts.from_conversations(convs)
    for chosen in (np.arange(40), np.array([3]), np.array([0, 7, 8, 39]), np.array([], int)):
        dense = np.zeros(50, np.int64)
        for i in chosen:
            dense += np.bincount(convs[i], minlength=50)
        assert np.array_equal(data.subset_counts(chosen, 50), dense)


def test_stability_and_sweep_on_hand_made_counts():
    flops = flops_breakdown({"hidden_size": 64, "intermediate_size": 128,
                             "num_attention_heads": 4, "vocab_size": 100})
    # Every conversation uses the same 10 tokens equally: k* never depends on the sample.
    convs = [np.repeat(np.arange(10), 3) for _ in range(60)]
    res = stability(SparseCounts.from_conversations(convs), 100, flops, sizes=[5, 20, 60],
                    repeats=3, alpha=0.0, c_min=0.9)
    assert res["reference_k"] == 9  # α = 0: the fewest tokens reaching C = 0.9, 9 of 10
    assert [p["ks"] for p in res["points"]] == [[9, 9, 9], [9, 9, 9], [9]]
    assert res["stable_from"] == 5
    # Half the conversations add rare tokens: small samples miss them, k* moves with size.
    rng = np.random.default_rng(1)
    convs = [np.concatenate([np.repeat(np.arange(10), 3), rng.integers(10, 100, 6)])
             for _ in range(200)]
    res = stability(SparseCounts.from_conversations(convs), 100, flops, sizes=[2, 200],
                    repeats=4, c_min=0.95)
    assert res["points"][-1]["ks"] == [res["reference_k"]]
    counts = SparseCounts.from_conversations(convs).subset_counts(np.arange(200), 100)
    rows = sweep(counts, flops, [0.2, 0.8], [0.9, 1.0, 0.5])
    for r in rows:
        objective = make_objective(counts, flops, r["alpha"], r["c_min"])
        assert r["k"] == optimize_objective(objective, solver="exact").chosen.k
    assert len(rows) == 6


def test_groups_and_per_conversation_ids_match_plain_counting(load_tok, tmp_path):
    tok = load_tok("llama3", "meta-llama")
    records = [{"cat": c, "messages": [{"role": "user", "content": f"q{i}"},
                                       {"role": "assistant", "content": f"answer {i} " * (i + 1)}]}
               for i, c in enumerate(["x", "y", "x", "z", "y"])]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    spans = ChatSpans(tok)
    reader = read_conversations(path, columns=ColumnMap(group="cat"))
    total = count_tokens(reader, spans, 128_256, workers=1).counts
    for workers in (1, 2):
        groups = count_by_group(reader, spans, 128_256, workers=workers, batch_size=2)
        assert sorted(groups) == ["x", "y", "z"]
        assert np.array_equal(sum(groups.values()), total)
        per = list(iter_supervised(reader, spans, 128_256, workers=workers, batch_size=2))
        assert sorted(c.group for c, _ in per) == ["x", "x", "y", "y", "z"]
        assert np.array_equal(np.bincount(np.concatenate([i for _, i in per]),
                                          minlength=128_256), total)


def test_analysis_commands_end_to_end(tmp_path, load_tok):
    records = [{"category": c, "messages": [
        {"role": "user", "content": "Say something"},
        {"role": "assistant", "content": text}]} for c, text in [
        ("code", "def f(x): return x + 1"), ("code", "print(f(41))"),
        ("chat", "Hello there, how are you today?"), ("chat", "Fine thanks, and you?")]]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "run"
    ok_json("optimize", data, *EXPLICIT, "--workers", "1", "--solver", "exact", "--c-min", "0.6",
            "--no-plots", "--out", run)
    cov = ok_json("coverage", data, "--run", run, "--group-by", "category", *EXPLICIT,
                  "--workers", "1", "--train-data", data)
    rows = {r["name"]: r for r in cov["rows"]}
    assert set(rows) == {"chat", "code", "all"}
    assert rows["all"]["coverage"] == pytest.approx(json.loads(
        (run / "summary.json").read_text())["coverage"])  # same data: the optimiser's C(k*)
    assert sum(rows[n]["train_share"] for n in ("chat", "code")) == pytest.approx(1.0)
    miss = ok_json("missing", data, "--run", run, "--group-by", "category", *EXPLICIT,
                   "--workers", "1", "--top", 3)
    assert set(miss["sets"]) == {"chat", "code", "all"}
    assert all(len(v) <= 3 for v in miss["sets"].values())
    sw = ok_json("sweep", "--run", run, "--config", LLAMA_CONFIG, "--alphas", "0.3,0.7",
                 "--c-mins", "0.5,0.6")
    assert len(sw["rows"]) == 4 and (run / "analysis" / "sweep.png").is_file()
    st = ok_json("stability", data, *EXPLICIT, "--workers", "1", "--sizes", "2,4",
                 "--repeats", 2, "--c-min", "0.6", "-o", run / "analysis")
    assert st["conversations"] == 4 and (run / "analysis" / "stability.png").is_file()
    rep = ok_json("report", run)
    assert rep["analyses"] == ["coverage", "missing", "stability", "sweep"]
    html = (run / "report.html").read_text()
    assert "Coverage on evaluation data" in html and "data:image/png;base64," in html
    # Evaluation against another model (V = 49,152, not 128,256): refused before counting.
    fail("coverage", data, "--run", run, "--preset", "smollm2-135m", "--workers", "1",
         words=("V=128,256", "vocab_size 49,152", "--preset"))
    fail("coverage", data, words=("exactly one of",))
    fail("report", tmp_path, words=("summary.json",))
