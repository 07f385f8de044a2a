import json
from pathlib import Path

import numpy as np
import pytest

import draftvocab
from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.flops import flops_breakdown

LLAMA = Path(draftvocab.__file__).parent / "data" / "llama-3.1-8b-config.json"

# d=64, H=4 (d/H=16), KV=2, I=96, V=1000: small enough to check by hand.
SMALL = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
}


def test_llama_31_8b_matches_paper_table_1():
    f = flops_breakdown(LLAMA)
    assert f.fusion == 100_663_296  # 2·3·4096·4096
    assert f.attention == 134_217_728  # q 67.1M + k,v 33.6M + o 33.6M
    assert f.mlp == 352_321_536  # 3·2·4096·14336
    assert f.lm_head() == 1_050_673_152  # 2·4096·128256
    assert f.total() == 1_637_875_712
    assert f.fixed == 587_202_560
    assert (f.hidden_size, f.target_hidden_size, f.head_dim) == (4096, 4096, 128)
    assert (f.num_key_value_heads, f.vocab_size) == (8, 128256)


def test_llama_config_file_has_public_values():
    cfg = json.loads(LLAMA.read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["rope_scaling"]["rope_type"] == "llama3"
    assert cfg["eos_token_id"] == [128001, 128008, 128009]
    assert cfg["max_position_embeddings"] == 131072
    assert cfg["tie_word_embeddings"] is False


def test_rows_and_paper_reduction():
    f = flops_breakdown(LLAMA)
    rows = f.rows()
    assert [r[0] for r in rows] == ["Feature fusion", "Attention", "MLP", "LM head", "Total"]
    assert rows[-1][1:] == (1_637_875_712, 1.0)
    assert rows[3][2] == pytest.approx(0.6415, abs=1e-4)  # paper: LM head 64.2% (rounded)
    assert rows[0][2] == pytest.approx(0.0615, abs=1e-4)  # paper: 6.1%
    # The paper's k* = 13,264 gives "57.5% LM head latency reduction".
    assert f.latency_reduction(13264) == pytest.approx(0.5751, abs=1e-4)
    small = f.rows(1000)
    assert small[3][1] == 2 * 4096 * 1000
    assert small[4][1] == f.fixed + 2 * 4096 * 1000


def test_latency_reduction_vectorised_and_endpoints():
    f = flops_breakdown(SMALL)
    ks = np.array([0, 1, 500, 1000])
    r = f.latency_reduction(ks)
    assert r.dtype == np.float64
    np.testing.assert_allclose(r, [f.latency_reduction(int(k)) for k in ks])
    assert r[-1] == 0.0
    assert r[0] == pytest.approx(f.lm_head() / f.total())
    assert np.all(np.diff(r) < 0)
    np.testing.assert_array_equal(f.total(ks), f.fixed + 2 * 64 * ks)


def test_small_config_by_hand():
    f = flops_breakdown(SMALL)
    assert f.head_dim == 16
    assert f.fusion == 2 * 3 * 64 * 64
    # q 2·128·64 + k,v 2·2·128·32 + o 2·64·64
    assert f.attention == 16384 + 16384 + 8192
    assert f.mlp == 3 * 2 * 64 * 96
    assert f.lm_head() == 2 * 64 * 1000


def test_explicit_head_dim_changes_only_attention():
    base = flops_breakdown(SMALL)
    wide = flops_breakdown({**SMALL, "head_dim": 32})
    assert wide.head_dim == 32
    # q 2·128·128 + k,v 2·2·128·64 + o 2·128·64
    assert wide.attention == 32768 + 32768 + 16384
    assert (wide.fusion, wide.mlp, wide.lm_head()) == (base.fusion, base.mlp, base.lm_head())
    assert flops_breakdown({**SMALL, "head_dim": None}).head_dim == 16


def test_target_hidden_size_changes_only_fusion():
    base = flops_breakdown(SMALL)
    f = flops_breakdown({**SMALL, "target_hidden_size": 128})
    assert f.target_hidden_size == 128
    assert f.fusion == 2 * 3 * 128 * 64
    assert (f.attention, f.mlp, f.lm_head()) == (base.attention, base.mlp, base.lm_head())


def test_kv_heads_default_to_attention_heads():
    cfg = {k: v for k, v in SMALL.items() if k != "num_key_value_heads"}
    f = flops_breakdown(cfg)
    assert f.num_key_value_heads == 4
    assert f.attention == 16384 + 2 * 2 * 128 * 64 + 8192


def test_text_config_fallback_and_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": SMALL}))
    assert flops_breakdown(tmp_path) == flops_breakdown(SMALL)


def test_missing_field_names_field_and_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in SMALL.items() if k != "intermediate_size"}))
    with pytest.raises(DraftVocabError, match="intermediate_size") as err:
        flops_breakdown(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("bad", [0, -4, "64", 64.0, True])
def test_non_positive_int_field_rejected(bad):
    with pytest.raises(DraftVocabError, match="'hidden_size' must be a positive integer"):
        flops_breakdown({**SMALL, "hidden_size": bad})


def test_bad_json_and_missing_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(DraftVocabError, match="not valid JSON"):
        flops_breakdown(bad)
    with pytest.raises(DraftVocabError, match="not found"):
        flops_breakdown(tmp_path / "nope.json")
    with pytest.raises(DraftVocabError, match="not found"):
        flops_breakdown(tmp_path / "empty_dir")


def test_to_json_round_trips():
    data = json.loads(json.dumps(flops_breakdown(LLAMA).to_json()))
    assert data["total"] == 1_637_875_712
    assert data["lm_head"] == 1_050_673_152
    assert data["head_dim"] == 128
