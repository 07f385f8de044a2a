"""The EAGLE-3 draft: shapes, mapping buffers, SpecForge checkpoint format and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.drafters import DraftConfig, Eagle3Draft, aux_layers, load_draft, save_draft
from draftvocab.engine.quantize import int8_linear
from draftvocab.engine.rowforms import few_rows_linear
from tests.conftest import make_tiny_target

SPECFORGE_KEYS = {
    "fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
    "midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight",
    "midlayer.post_attention_layernorm.weight", "midlayer.self_attn.q_proj.weight",
    "midlayer.self_attn.k_proj.weight", "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight", "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight", "midlayer.mlp.down_proj.weight",
}


def trimmed(target, keep):
    t2d = torch.zeros(target.vocab_size, dtype=torch.bool)
    t2d[keep] = True
    d2t = torch.nonzero(t2d).flatten() - torch.arange(len(keep))
    return Eagle3Draft(DraftConfig.for_target(target, len(keep)),
                       target.model.get_input_embeddings(), d2t, t2d)


def test_shapes_and_widths(tiny_target):
    draft = trimmed(tiny_target, [0, 5, 9, 100])
    c = draft.config
    assert (c.hidden_size, c.target_hidden_size, c.draft_vocab_size) == (64, 64, 4)
    assert draft.fc.weight.shape == (64, 3 * 64)  # fusion of three target layers
    assert draft.midlayer.self_attn.q_proj.weight.shape == (4 * 16, 2 * 64)  # 2d input
    assert draft.midlayer.self_attn.k_proj.weight.shape == (2 * 16, 2 * 64)
    assert draft.lm_head.weight.shape == (4, 64)
    out = tiny_target.forward(torch.tensor([[1, 2, 3]]))
    logits, h, k, _v = draft.step(draft.fuse(out.hidden), torch.tensor([[2, 3, 4]]),
                                 torch.arange(3)[None])
    assert logits.shape == (1, 3, 4) and h.shape == (1, 3, 64) and k.shape == (1, 2, 3, 16)
    assert draft.to_target_ids(torch.arange(4)).tolist() == [0, 5, 9, 100]
    inverse = draft.target_to_draft()
    assert inverse[[0, 5, 9, 100]].tolist() == [0, 1, 2, 3] and int(inverse[1]) == -1


def test_full_vocabulary_needs_no_mapping(tiny_target):
    draft = Eagle3Draft(DraftConfig.for_target(tiny_target), tiny_target.model.get_input_embeddings())
    assert draft.config.draft_vocab_size == tiny_target.vocab_size
    assert int(draft.d2t.abs().sum()) == 0 and bool(draft.t2d.all())
    with pytest.raises(DraftVocabError, match="needs its d2t/t2d"):
        Eagle3Draft(DraftConfig.for_target(tiny_target, 10), tiny_target.model.get_input_embeddings())


def test_inconsistent_mapping_is_refused(tiny_target):
    t2d = torch.zeros(tiny_target.vocab_size, dtype=torch.bool)
    t2d[[1, 2]] = True
    with pytest.raises(DraftVocabError, match="inconsistent"):
        Eagle3Draft(DraftConfig.for_target(tiny_target, 2), tiny_target.model.get_input_embeddings(),
                    torch.tensor([0, 5]), t2d)


def test_checkpoint_round_trip_in_specforge_format(tiny_target, tmp_path):
    torch.manual_seed(3)
    draft = trimmed(tiny_target, [0, 5, 9, 100])
    save_draft(draft, tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["config.json", "model.safetensors"]
    state = load_file(str(tmp_path / "d" / "model.safetensors"))
    assert set(state) == SPECFORGE_KEYS  # no embeddings
    assert state["d2t"].dtype == torch.int64 and state["t2d"].dtype == torch.bool
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    assert (cfg["draft_vocab_size"], cfg["vocab_size"], cfg["target_hidden_size"]) == (
        4, tiny_target.vocab_size, 64)
    loaded = load_draft(tmp_path / "d", tiny_target)
    for key, value in draft.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    save_draft(draft, tmp_path / "bf16", dtype=torch.bfloat16)
    assert load_file(str(tmp_path / "bf16" / "model.safetensors"))["fc.weight"].dtype == torch.bfloat16
    # a loaded draft decodes with int8 weights on CPU (quantize.py), or if told not to with
    # the target's few-row products (prepacked bf16 on CPU)
    bf16 = load_draft(tmp_path / "bf16", tiny_target, dtype=torch.bfloat16)
    assert bf16.lm_head.forward.__func__ is int8_linear
    bf16 = load_draft(tmp_path / "bf16", tiny_target, dtype=torch.bfloat16, int8=False)
    assert bf16.lm_head.forward.__func__ is few_rows_linear
    assert bf16.lm_head.weight.dtype == torch.bfloat16


def _broken(tmp_path, tiny_target, kind):
    torch.manual_seed(0)
    path = save_draft(trimmed(tiny_target, [0, 5, 9, 100]), tmp_path / kind)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if kind == "missing":
        weights.unlink()
    elif kind == "bad_json":
        cfg_file.write_text("{not json")
    elif kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif kind == "foreign":
        save_file({"weight": torch.zeros(3)}, str(weights))
    elif kind == "shapes":
        cfg = json.loads(cfg_file.read_text())
        cfg["intermediate_size"] = 96
        cfg_file.write_text(json.dumps(cfg))
    elif kind == "vocab":
        cfg = json.loads(cfg_file.read_text())
        cfg["vocab_size"] = 1000
        cfg_file.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("kind, words", [
    ("missing", "not a draft checkpoint"), ("bad_json", "not a valid draft config"),
    ("truncated", "not a readable safetensors file"), ("foreign", "not an EAGLE-3 draft"),
    ("shapes", "does not fit its config"), ("vocab", "V=1000"),
])
def test_bad_checkpoints_are_clear_errors(tmp_path, tiny_target, kind, words):
    with pytest.raises(DraftVocabError, match=words):
        load_draft(_broken(tmp_path, tiny_target, kind), tiny_target)


def test_target_hidden_size_mismatch(tmp_path, tiny_target):
    path = save_draft(trimmed(tiny_target, [0, 5]), tmp_path / "d")
    other = make_tiny_target(hidden_size=32, head_dim=8)
    with pytest.raises(DraftVocabError, match="target hidden size 64, target has 32"):
        load_draft(path, other)


def test_aux_layers_must_match_the_target(tmp_path, tiny_target):
    path = save_draft(trimmed(tiny_target, [0, 5]), tmp_path / "d")
    assert aux_layers([path, path]) == tuple(tiny_target.layers)
    assert aux_layers([]) is None
    cfg = json.loads((path / "config.json").read_text())
    cfg["target_layers"] = [0, 1, 2]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "e" / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(DraftVocabError, match=r"different target layers"):
        aux_layers([path, tmp_path / "e"])
    with pytest.raises(DraftVocabError, match=r"reads target aux layers \[0, 1, 2\]"):
        load_draft(tmp_path / "e", tiny_target)
    other = make_tiny_target(layers=(0, 1, 2))
    assert load_draft(tmp_path / "e", other).config.target_layers == (0, 1, 2)
