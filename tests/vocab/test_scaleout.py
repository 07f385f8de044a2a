"""The `datasets` (num_proc) and Ray Data engines count exactly what the built-in counter counts
on the same data: same vector, same conversations, same skip reasons."""

from __future__ import annotations

import json

import numpy as np
import pytest

from draftvocab.chat.conversations import read_conversations
from draftvocab.chat.spans import ChatSpans
from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.counts import count_tokens
from draftvocab.vocab.scaleout import count_with_datasets, count_with_ray
from tests.cli.test_cli import RECORDS

V = 128_256


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    extra = [
        {"messages": [{"role": "user", "content": "no answer here"}]},  # no assistant turn
        {"messages": []},  # empty
        {"conversations": [{"from": "system", "value": "Pirate."}, {"from": "human", "value": "Hi"},
                           {"from": "gpt", "value": "Arr, 42 doubloons!"}]},
    ]
    records = [*RECORDS * 5, *extra, *RECORDS]
    path = tmp_path_factory.mktemp("d") / "mixed.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def local(data, load_tok):
    spans = ChatSpans(load_tok("llama3", "meta-llama"))
    return spans, count_tokens(read_conversations(data), spans, V, workers=1)


def _same(engine, local_counts):
    assert np.array_equal(engine.counts, local_counts.counts)
    for key in ("conversations", "supervised_tokens", "skipped", "tokenizer", "chat_template"):
        assert engine.metadata[key] == local_counts.metadata[key], key


def test_datasets_engine_equals_local(data, local):
    spans, expected = local
    for num_proc in (None, 2):
        _same(count_with_datasets([str(data)], spans, V, num_proc=num_proc, batch_size=3),
              expected)


def test_ray_engine_equals_local(data, local):
    import ray

    spans, expected = local
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        _same(count_with_ray([str(data)], spans, V, batch_size=3), expected)
    finally:
        ray.shutdown()


def test_unsupported_files_and_foreign_ids(tmp_path, local):
    spans, _ = local
    with pytest.raises(DraftVocabError, match="read .jsonl, .json or .parquet"):
        count_with_datasets([str(tmp_path / "x.csv")], spans, V)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(DraftVocabError, match="vocab_size 1000"):
        count_with_datasets([str(path)], spans, 1000)


def test_count_command_engines(data, tmp_path):
    from draftvocab.vocab.counts import TokenCounts
    from tests.cli.test_cli import EXPLICIT, fail, ok_json

    ok_json("count", data, *EXPLICIT, "--workers", "1", "-o", tmp_path / "local.safetensors")
    ok_json("count", data, *EXPLICIT, "--engine", "datasets", "--workers", "2", "-o",
            tmp_path / "ds.safetensors")
    a, b = (TokenCounts.load(tmp_path / f"{n}.safetensors") for n in ("local", "ds"))
    assert np.array_equal(a.counts, b.counts) and a.total > 0
    fail("count", data, *EXPLICIT, "--engine", "spark", "-o", tmp_path / "x.safetensors",
         words=("--engine",))
