"""Exports to SpecForge / SGLang / speculators / FR-Spec and imports back: key names, dtypes,
configs, exact round trips, and clear refusals (pickles, broken mappings, wrong V)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.drafters import load_draft, save_draft
from draftvocab.interop import formats
from draftvocab.vocab.mapping import build_mapping, write_mapping_files
from tests.conftest import make_tiny_target
from tests.engine.test_draft import trimmed

KEEP = [0, 5, 9, 100, 2000, 49151]
SGLANG_KEYS = {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
               "midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight",
               "midlayer.post_attention_layernorm.weight", "midlayer.self_attn.q_proj.weight",
               "midlayer.self_attn.k_proj.weight", "midlayer.self_attn.v_proj.weight",
               "midlayer.self_attn.o_proj.weight", "midlayer.mlp.gate_proj.weight",
               "midlayer.mlp.up_proj.weight", "midlayer.mlp.down_proj.weight"}


def random_draft(target, keep=KEEP, seed=0):
    torch.manual_seed(seed)
    draft = trimmed(target, keep)
    with torch.no_grad():
        for p in draft.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return draft


@pytest.fixture()
def saved(tmp_path, tiny_target):
    return save_draft(random_draft(tiny_target), tmp_path / "ours")


def test_sglang_export_is_bf16_with_specforge_names(saved, tmp_path):
    out = tmp_path / "sglang"
    formats.export_sglang(saved, out)
    state = load_file(str(out / "model.safetensors"))
    assert set(state) == SGLANG_KEYS  # no embed_tokens: SGLang uses the target's
    assert all(v.dtype == torch.bfloat16 for k, v in state.items() if k not in ("d2t", "t2d"))
    assert state["d2t"].dtype == torch.int64 and state["t2d"].dtype == torch.bool
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"]
    assert cfg["draft_vocab_size"] == len(KEEP) and cfg["vocab_size"] == 49152
    ours = load_file(str(saved / "model.safetensors"))
    torch.testing.assert_close(state["fc.weight"].float(), ours["fc.weight"].bfloat16().float())
    mask = os.umask(0)
    os.umask(mask)
    for f in (out / "model.safetensors", saved / "model.safetensors"):  # not safetensors' 0600
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask


def test_speculators_export_renames_and_imports_back_exactly(saved, tmp_path, tiny_target):
    out = tmp_path / "vllm"
    formats.export_speculators(saved, out, verifier="org/target")
    state = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith("midlayer.") for k in state)
    assert "layers.0.self_attn.q_proj.weight" in state and "d2t" in state
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["speculators_model_type"] == "eagle3"
    assert cfg["speculators_config"]["verifier"]["name_or_path"] == "org/target"
    assert cfg["transformer_layer_config"]["vocab_size"] == 49152
    assert cfg["eagle_aux_hidden_state_layer_ids"] == list(tiny_target.layers)
    assert formats.detect_format(out) == "speculators"
    back = tmp_path / "back"
    summary = formats.import_draft(out, back)
    assert summary["format"] == "speculators" and summary["draft_vocab_size"] == len(KEEP)
    a, b = load_file(str(saved / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert load_draft(back, tiny_target).config == load_draft(saved, tiny_target).config


def test_full_vocabulary_speculators_export_has_no_mapping(tmp_path, tiny_target):
    from draftvocab.engine.drafters import DraftConfig, Eagle3Draft

    draft = Eagle3Draft(DraftConfig.for_target(tiny_target),
                        tiny_target.model.get_input_embeddings())
    path = save_draft(draft, tmp_path / "full")
    formats.export_speculators(path, tmp_path / "vllm")
    state = load_file(str(tmp_path / "vllm" / "model.safetensors"))
    assert "d2t" not in state and "t2d" not in state
    formats.import_draft(tmp_path / "vllm", tmp_path / "back")  # identity mapping restored
    assert load_draft(tmp_path / "back", tiny_target).config.draft_vocab_size == 49152


def test_specforge_export_from_a_mapping_and_from_a_draft(tmp_path, saved):
    counts = np.zeros(49152, dtype=np.int64)
    counts[[7, 3, 11, 40000]] = [50, 40, 40, 1]
    write_mapping_files(tmp_path / "run", build_mapping(counts, 3))
    cfg = make_tiny_target().config.to_dict()
    formats.export_specforge(tmp_path / "run", tmp_path / "sf", target_config=cfg)
    m = torch.load(tmp_path / "sf" / "vocab_mapping.pt", weights_only=True)
    assert set(m) == {"d2t", "t2d"} and m["d2t"].dtype == torch.int64
    assert (torch.nonzero(m["t2d"]).flatten() == torch.tensor([3, 7, 11])).all()
    assert torch.equal(m["d2t"] + torch.arange(3), torch.tensor([3, 7, 11]))
    sf = json.loads((tmp_path / "sf" / "config.json").read_text())
    assert sf["draft_vocab_size"] == 3 and sf["vocab_size"] == 49152
    assert sf["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    assert not (tmp_path / "sf" / "model.safetensors").exists()
    with pytest.raises(DraftVocabError, match="target's config"):
        formats.export_specforge(tmp_path / "run", tmp_path / "sf2")
    formats.export_specforge(saved, tmp_path / "sf3")  # a draft: weights come along
    assert set(load_file(str(tmp_path / "sf3" / "model.safetensors"))) == SGLANG_KEYS
    assert formats.detect_format(tmp_path / "sf3") == "specforge"


def test_frspec_is_frequency_ordered(tmp_path):
    counts = np.array([5, 9, 0, 9, 1, 7], dtype=np.int64)
    summary = formats.export_frspec(counts, 4, tmp_path)
    ids = torch.load(summary["out"], weights_only=True)
    assert ids.dtype == torch.int64 and ids.tolist() == [1, 3, 5, 0]  # ties: lower id first
    assert summary["out"].endswith("freq_4.pt")
    with pytest.raises(DraftVocabError, match="k must be in"):
        formats.export_frspec(counts, 7, tmp_path)


def test_pickles_and_broken_mappings_are_refused(tmp_path, saved, tiny_target):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    cfg = json.loads((saved / "config.json").read_text())
    cfg.pop("target_layers")  # a SpecForge checkpoint
    (foreign / "config.json").write_text(json.dumps(cfg))
    with open(foreign / "pytorch_model.bin", "wb") as f:
        pickle.dump({"fc.weight": Evil()}, f)
    with pytest.raises(DraftVocabError, match="not a weights-only file"):
        formats.import_draft(foreign, tmp_path / "x")

    state = load_file(str(saved / "model.safetensors"))
    state["d2t"] = state["d2t"].clone()
    state["d2t"][0] += 1  # nonzero(t2d) no longer equals d2t + arange(k)
    torch.save(state, foreign / "pytorch_model.bin")
    with pytest.raises(DraftVocabError, match=r"nonzero\(t2d\) != d2t \+ arange\(k\)"):
        formats.import_draft(foreign, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written

    state = load_file(str(saved / "model.safetensors"))
    state["t2d"] = torch.ones(100, dtype=torch.bool)
    torch.save(state, foreign / "pytorch_model.bin")
    with pytest.raises(DraftVocabError, match="shapes"):
        formats.import_draft(foreign, tmp_path / "x")

    other_v = make_tiny_target(vocab_size=1000)
    with pytest.raises(DraftVocabError, match="V=49152, target vocab_size is 1000"):
        load_draft(saved, other_v)
    with pytest.raises(DraftVocabError, match="not an EAGLE-3 draft"):
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
        formats.import_draft(tmp_path / "plain", tmp_path / "x")


def test_import_needs_the_layers_and_a_mapping(tmp_path, saved):
    src = tmp_path / "sf"
    formats.export_specforge(saved, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("eagle_config")
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DraftVocabError, match="which target layers"):
        formats.import_draft(src, tmp_path / "x")
    summary = formats.import_draft(src, tmp_path / "x", target_layers=(1, 2, 3),
                                   mapping=src / "vocab_mapping.pt")
    assert summary["target_layers"] == [1, 2, 3]
    state = load_file(str(src / "model.safetensors"))
    del state["d2t"], state["t2d"]
    from safetensors.torch import save_file

    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(DraftVocabError, match="needs d2t/t2d"):
        formats.import_draft(src, tmp_path / "y", target_layers=(1, 2, 3))
