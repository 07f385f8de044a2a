"""The library twins of the vocabulary, analysis and interop commands (`draftvocab.api`): each
returns what its command prints with --json, writes the same artefacts, and checks its
parameters before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import draftvocab
from draftvocab import DraftVocabError, build_mapping, count, optimize
from draftvocab.api import analysis, interop
from draftvocab.api import vocab as api_vocab
from draftvocab.api.inputs import numbers, setup, vocabulary
from draftvocab.vocab.counts import TokenCounts
from draftvocab.vocab.objective import check_weights
from tests.cli.test_cli import EXPLICIT, ok_json, write_jsonl

GROUPED = [
    {"category": "chat", "messages": [{"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Hello! How are you?"}]},
    {"category": "code", "messages": [{"role": "user", "content": "Code?"},
                                      {"role": "assistant", "content": "print('hi')  # ok"}]},
    {"category": "chat", "messages": [{"role": "user", "content": "Thanks"},
                                      {"role": "assistant", "content": "You are welcome!"}]},
]


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("api") / "chats.jsonl", GROUPED)


@pytest.fixture(scope="module")
def counted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("api-counts") / "counts.safetensors"
    return count([str(data)], out=out, tokenizer=EXPLICIT[1], chat_template=EXPLICIT[3],
                 config=EXPLICIT[5])


def test_root_exports_the_command_api_lazily():
    for name in ("count", "optimize", "build_mapping", "train", "generate", "bench",
                 "calibrate"):
        fn = getattr(draftvocab, name)
        assert callable(fn) and name in draftvocab.__all__
        assert fn.__doc__
    for name in ("count", "optimize", "build_mapping"):
        assert "Example" in getattr(draftvocab, name).__doc__
    assert draftvocab.count is api_vocab.count


def test_count_equals_the_cli_json_and_file(data, counted, tmp_path):
    out = tmp_path / "cli.safetensors"
    cli = ok_json("count", data, *EXPLICIT, "--out", out)
    assert without(counted.to_json(), "out") == without(cli, "out")
    assert counted.to_json()["out"] == str(counted.out)
    assert np.array_equal(TokenCounts.load(counted.out).counts, TokenCounts.load(out).counts)
    assert counted.counts.metadata["conversations"] == 3


def test_count_reports_progress_through_the_callback(data):
    calls = []
    res = count(str(data), tokenizer=EXPLICIT[1], chat_template=EXPLICIT[3],
                config=EXPLICIT[5], progress=lambda *a, **kw: calls.append((a, kw)))
    assert res.out is None and res.to_json()["out"] is None  # nothing written
    assert calls[0][0][:2] == ("counting", 0)  # the stage starts
    done = sum(a[1] for a, _ in calls[1:])
    tokens = sum(kw.get("tokens", 0) for _, kw in calls[1:])
    assert done == 3 and tokens == res.counts.total


def test_optimize_result_fields_and_files(counted, tmp_path):
    run = optimize(counts=counted.out, config=EXPLICIT[5], out=tmp_path / "run",
                   solver="exact", plots=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert run.objective == "utility" and run.out == tmp_path / "run"
    assert run.k == run.result.chosen.k == summary["k"] == run.summary["k"]
    assert run.to_json() == {**summary, "out": str(tmp_path / "run")}
    assert 1 <= run.k <= counted.counts.vocab_size
    assert summary["coverage"] >= 0.9 and not run.counted
    assert summary["inputs"]["counts_file"] == str(counted.out)
    assert np.array_equal(build_mapping(counted.counts.counts, run.k).t2d,
                          vocabulary(run=tmp_path / "run").t2d)


def test_optimize_equals_the_cli_json(counted, tmp_path):
    run = optimize(counts=counted.out, config=EXPLICIT[5], out=tmp_path / "api",
                   solver="exact", plots=False)
    cli = ok_json("optimize", "--counts", counted.out, "--config", EXPLICIT[5], "--out",
                  tmp_path / "cli", "--solver", "exact", "--no-plots")
    ours = run.to_json()
    for d in (ours, cli):
        for solver in ("chosen", "exact", "tpe"):
            if d.get(solver):
                d[solver].pop("seconds")
        d.pop("out")
    assert ours == cli


def test_optimize_takes_counts_in_memory(counted, tmp_path):
    run = optimize(counts=counted.counts, config=EXPLICIT[5], out=tmp_path / "mem",
                   solver="exact", plots=False)
    assert run.summary["inputs"]["counts_file"] is None
    assert (tmp_path / "mem" / "counts.safetensors").is_file()


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"alpha": 2.0}, "alpha must be in [0, 1], got 2"),
    ({"c_min": -0.1}, "c_min must be in [0, 1], got -0.1"),
    ({"solver": "grid"}, "--solver must be exact, tpe or both"),
    ({"trials": 0}, "--trials must be at least 1"),
    ({"objective": "fast"}, "--objective must be utility or speedup"),
])
def test_optimize_checks_parameters_before_any_work(counted, tmp_path, kwargs, words):
    with pytest.raises(DraftVocabError, match=words.replace("[", r"\[").replace("]", r"\]")):
        optimize(counts=counted.out, config=EXPLICIT[5], out=tmp_path / "never", **kwargs)
    assert not (tmp_path / "never").exists()


def test_check_weights():
    assert check_weights(0, 1) == (0.0, 1.0)
    for bad in ((1.5, 0.9), (0.5, float("nan"))):
        with pytest.raises(DraftVocabError, match="must be in \\[0, 1\\]"):
            check_weights(*bad)


def test_flops_and_mapping_equal_the_cli(counted, tmp_path):
    assert api_vocab.flops(k=32000).to_json() == ok_json("flops", "--k", 32000)
    res = api_vocab.mapping(counted.out, 5, tmp_path / "m")
    cli = ok_json("mapping", "--counts", counted.out, "--k", 5, "--out", tmp_path / "c")
    assert without(res.to_json(), "out") == without(cli, "out")
    assert res.files == sorted(p.name for p in (tmp_path / "m").iterdir())


def test_merge_sums_the_parts(counted, tmp_path):
    res = api_vocab.merge([counted.out, counted.out], tmp_path / "sum.safetensors")
    assert res.counts.total == 2 * counted.counts.total
    assert res.to_json()["parts"] == [str(counted.out)] * 2


def test_setup_defaults_and_numbers():
    s = setup("smollm2-135m", None, need_tokenizer=False)
    assert s.vocab_size == 49152 and s.tokenizer is None and s.data
    assert numbers("0.5, 0.9", "--x") == [0.5, 0.9] and numbers([1, 2], "--x", int) == [1, 2]
    with pytest.raises(DraftVocabError, match="--x takes comma-separated numbers"):
        numbers("1,a", "--x")


def test_coverage_missing_sweep_report(data, counted, tmp_path):
    run = optimize(counts=counted.out, config=EXPLICIT[5], out=tmp_path / "run",
                   solver="exact", plots=False)
    ev = {"tokenizer": EXPLICIT[1], "chat_template": EXPLICIT[3], "config": EXPLICIT[5]}
    cov = analysis.coverage(str(data), run=run.out, group_by="category", **ev)
    rows = {r["name"]: r for r in cov.result["rows"]}
    assert set(rows) >= {"chat", "code"}
    assert cov.to_json()["out"] == str(run.out / "analysis")
    assert json.loads((run.out / "analysis" / "coverage.json").read_text()) == cov.result
    assert cov.markdown.startswith(f"Vocabulary: {run.out} (k = {run.k:,})")
    miss = analysis.missing(str(data), counts=counted.out, k=1, top=3, **ev,
                            out=tmp_path / "miss")
    assert all(len(items) <= 3 for items in miss.result["sets"].values())
    assert (tmp_path / "miss" / "missing.md").read_text() == miss.markdown
    sw = analysis.sweep(run.out, alphas=[0.3, 0.7], c_mins="0.8,0.9", out=tmp_path / "sw")
    assert {(r["alpha"], r["c_min"]) for r in sw.result["rows"]} == {
        (a, c) for a in (0.3, 0.7) for c in (0.8, 0.9)}
    rep = analysis.report(run.out)
    assert rep.to_json() == {"out": str(run.out / "report.html"), "analyses": ["coverage"]}
    assert (run.out / "report.html").stat().st_size > 0


def test_export_frspec_equals_the_cli(counted, tmp_path):
    ours = interop.export(counted.out, "frspec", tmp_path / "a.pt", k=10)
    cli = ok_json("export", counted.out, "--to", "frspec", "-o", tmp_path / "b.pt", "--k", 10)
    assert without(ours, "out") == without(cli, "out") and ours["draft_vocab_size"] == 10
    with pytest.raises(DraftVocabError, match="--to must be one of"):
        interop.export(counted.out, "onnx", tmp_path / "c")
