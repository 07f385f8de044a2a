"""Other tools' formats, both ways: SpecForge, SGLang, speculators (vLLM) and FR-Spec.

Our own draft checkpoint already uses SpecForge/SGLang names (`fc.weight`, `midlayer.*`,
`norm.weight`, `lm_head.weight`, `d2t`, `t2d`); the formats differ in dtype, config schema and
where the vocabulary mapping lives:

- specforge: `vocab_mapping.pt` = `{"d2t", "t2d"}` (what `load_vocab_mapping` reads) and a
  draft `config.json` (LlamaForCausalLMEagle3, `draft_vocab_size`) for SpecForge's trainer.
- sglang: a bf16 draft checkpoint, no embeddings (SGLang takes the target's).
- speculators: `speculators_model_type: "eagle3"` config and `layers.0.*` weight names, for
  vLLM; d2t/t2d only when k < V (speculators has no buffers for a full vocabulary).
- frspec: the k most frequent target ids, most frequent first, as an int64 tensor — SGLang's
  `--speculative-token-map` for EAGLE-2 drafts (FR-Spec).

Reading goes through safetensors or `torch.load(weights_only=True)` only; every mapping is
checked (`nonzero(t2d) == d2t + arange(k)`, shapes, V) with the failing check named.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from draftvocab.core.atomic import atomic_directory, atomic_write
from draftvocab.core.errors import DraftVocabError

FORMATS = ("specforge", "sglang", "speculators", "frspec")
SPECULATORS_PREFIX = "layers.0."
OUR_PREFIX = "midlayer."


# --- reading ---------------------------------------------------------------------------------


def read_tensors(path: Path) -> dict[str, Any]:
    """A state dict from a file or a directory's model.safetensors / pytorch_model.bin, never
    unpickling anything but tensors."""
    from draftvocab.vocab.mapping import load_tensor_file

    if path.is_dir():
        found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not found:
            raise DraftVocabError(f"{path} has no model.safetensors or pytorch_model.bin")
        path = found[0]
    if not path.is_file():
        raise DraftVocabError(f"file not found: {path}")
    data = load_tensor_file(path)
    if not isinstance(data, dict):
        raise DraftVocabError(f"{path} holds a {type(data).__name__}, not a state dict")
    return data


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DraftVocabError(f"{path.parent} has no {path.name}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DraftVocabError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DraftVocabError(f"{path}: expected a JSON object")
    return data


def detect_format(path: str | os.PathLike) -> str:
    """'draftvocab', 'specforge' or 'speculators' for a draft checkpoint directory."""
    cfg = _read_json(Path(path) / "config.json")
    if cfg.get("speculators_model_type") is not None:
        if cfg["speculators_model_type"] != "eagle3":
            raise DraftVocabError(
                f"{path}: speculators model type {cfg['speculators_model_type']!r}, only "
                "'eagle3' is supported")
        return "speculators"
    if "LlamaForCausalLMEagle3" in (cfg.get("architectures") or []):
        return "draftvocab" if "target_layers" in cfg else "specforge"
    raise DraftVocabError(f"{path} is not an EAGLE-3 draft (config.json architectures "
                          f"{cfg.get('architectures')}, no speculators_model_type)")


def import_draft(path: str | os.PathLike, out: str | os.PathLike, *,
                 mapping: str | os.PathLike | None = None,
                 target_layers: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Convert a SpecForge or speculators EAGLE-3 checkpoint into ours (config.json +
    model.safetensors), dropping the embedding (the target's is used). `mapping` overrides
    the checkpoint's d2t/t2d (SpecForge keeps them in a separate vocab_mapping.pt too)."""
    import torch

    from draftvocab.engine.drafters import DraftConfig, check_mapping
    from draftvocab.vocab.mapping import load_mapping

    path = Path(path)
    kind = detect_format(path)
    cfg = _read_json(path / "config.json")
    state = read_tensors(path)
    if kind == "speculators":
        layer = cfg.get("transformer_layer_config") or {}
        if layer.get("model_type") != "llama":
            raise DraftVocabError(f"{path}: only llama-type speculators drafts can be imported "
                                  f"(transformer_layer_config.model_type = "
                                  f"{layer.get('model_type')!r})")
        for flag in ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output"):
            if cfg.get(flag):
                raise DraftVocabError(f"{path}: {flag}=true has no equivalent in this engine")
        rope = layer.get("rope_parameters") or {}
        hf = {**layer, "draft_vocab_size": cfg.get("draft_vocab_size", layer.get("vocab_size")),
              "target_hidden_size": cfg.get("target_hidden_size") or layer.get("hidden_size"),
              "rope_theta": rope.get("rope_theta", layer.get("rope_theta", 10000.0)),
              "target_layers": cfg.get("eagle_aux_hidden_state_layer_ids")}
        state = {(OUR_PREFIX + k[len(SPECULATORS_PREFIX):] if k.startswith(SPECULATORS_PREFIX)
                  else k): v for k, v in state.items()}
    else:
        if cfg.get("fc_norm") or cfg.get("norm_output") is False:
            raise DraftVocabError(f"{path}: fc_norm / norm_output=false have no equivalent here")
        rope = cfg.get("rope_parameters") or {}
        hf = {**cfg, "rope_theta": rope.get("rope_theta", cfg.get("rope_theta", 10000.0))}
    if target_layers is not None:
        hf["target_layers"] = list(target_layers)
    if not hf.get("target_layers") and not (hf.get("eagle_config") or {}).get(
            "eagle_aux_hidden_state_layer_ids"):
        raise DraftVocabError(f"{path} does not say which target layers it reads; pass them "
                              "(--target-layers)")
    try:
        config = DraftConfig.from_hf(hf)
    except (TypeError, ValueError) as exc:
        raise DraftVocabError(f"{path}: not a valid draft config ({exc})") from None
    state = {k: v for k, v in state.items()
             if not k.startswith(("embed_tokens.", "verifier_")) and "rotary_emb" not in k}
    k, vocab = config.draft_vocab_size, config.vocab_size
    if mapping is not None:
        m = load_mapping(mapping, vocab_size=vocab)
        state["d2t"], state["t2d"] = torch.from_numpy(m.d2t.copy()), torch.from_numpy(m.t2d.copy())
    if "d2t" not in state or "t2d" not in state:
        if k != vocab:
            raise DraftVocabError(f"{path}: a draft with k={k} < V={vocab} needs d2t/t2d "
                                  "(in the checkpoint or via --mapping)")
        state["d2t"] = torch.zeros(vocab, dtype=torch.long)
        state["t2d"] = torch.ones(vocab, dtype=torch.bool)
    check_mapping(state["d2t"].long(), state["t2d"].bool(), k, vocab)
    state["d2t"], state["t2d"] = state["d2t"].long(), state["t2d"].bool()
    _write_checkpoint(out, config.to_hf(), state)
    return {"format": kind, "draft_vocab_size": k, "vocab_size": vocab,
            "target_layers": list(config.target_layers), "out": str(out)}


# --- writing ---------------------------------------------------------------------------------


def _write_checkpoint(out, config: dict[str, Any], state: dict[str, Any],
                      extra: dict[str, bytes] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_directory(Path(out)) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
    return Path(out)


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load_ours(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from draftvocab.engine.drafters import check_mapping, read_config, read_state

    config = read_config(path)
    config.check_servable("exporting or retrofitting")
    state = read_state(path, config)
    check_mapping(state["d2t"], state["t2d"], config.draft_vocab_size, config.vocab_size)
    return config.to_hf(), state


def specforge_config(hf: dict[str, Any]) -> dict[str, Any]:
    """SpecForge's `configs/*-eagle3.json` schema from our draft config."""
    keep = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "draft_vocab_size", "target_hidden_size", "rms_norm_eps",
            "rope_theta", "max_position_embeddings")
    out = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama",
           "num_hidden_layers": 1, "hidden_act": "silu", "tie_word_embeddings": False,
           "use_cache": True, "pad_token_id": 0, "rope_scaling": None, "pretraining_tp": 1,
           **{k: hf[k] for k in keep if k in hf}}
    out["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(hf["target_layers"])}
    return out


def export_specforge(source, out, *, target_config: dict[str, Any] | None = None,
                     target_layers: tuple[int, ...] | None = None) -> dict[str, Any]:
    """`vocab_mapping.pt` + draft `config.json` for SpecForge (+ `model.safetensors` when
    `source` is one of our draft checkpoints); or from a mapping (file or `optimize` run
    directory) plus the target's config, to train a new draft with that vocabulary."""
    import torch

    from draftvocab.vocab.mapping import load_mapping

    source = Path(source)
    state = None
    if (source / "model.safetensors").is_file() and (source / "config.json").is_file():
        hf, state = _load_ours(source)
        d2t, t2d = state["d2t"], state["t2d"]
    else:
        if target_config is None:
            raise DraftVocabError("exporting a mapping to SpecForge needs the target's config "
                                  "(--preset or --config)")
        from draftvocab.core.assets import config_vocab_size
        from draftvocab.engine.drafters import DraftConfig

        m = load_mapping(source, vocab_size=config_vocab_size(target_config))
        d2t, t2d = torch.from_numpy(m.d2t.copy()), torch.from_numpy(m.t2d.copy())
        hf = DraftConfig.from_target_config(target_config, m.k, target_layers).to_hf()
    config = specforge_config(hf)
    mapping_pt = {"vocab_mapping.pt": _torch_bytes({"d2t": d2t, "t2d": t2d})}
    if state is not None:  # a trained draft: its weights too, to warm-start SpecForge
        _write_checkpoint(out, config, state, extra=mapping_pt)
    else:
        with atomic_directory(Path(out)) as tmp:
            (tmp / "vocab_mapping.pt").write_bytes(mapping_pt["vocab_mapping.pt"])
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"format": "specforge", "draft_vocab_size": int(d2t.numel()),
            "vocab_size": int(t2d.numel()), "out": str(out)}


def export_sglang(source, out) -> dict[str, Any]:
    """Our draft as SGLang loads it: SpecForge names, bf16 weights, d2t/t2d, no embedding."""
    import torch

    hf, state = _load_ours(Path(source))
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    config = specforge_config(hf) | {"torch_dtype": "bfloat16"}
    _write_checkpoint(out, config, state)
    return {"format": "sglang", "draft_vocab_size": hf["draft_vocab_size"],
            "vocab_size": hf["vocab_size"], "out": str(out)}


def speculators_config(hf: dict[str, Any], verifier: str | None,
                       verifier_architectures: list[str] | None = None) -> dict[str, Any]:
    layer = {"model_type": "llama", "vocab_size": hf["vocab_size"],
             "hidden_size": hf["hidden_size"], "intermediate_size": hf["intermediate_size"],
             "num_hidden_layers": 1, "num_attention_heads": hf["num_attention_heads"],
             "num_key_value_heads": hf["num_key_value_heads"], "head_dim": hf["head_dim"],
             "max_position_embeddings": hf["max_position_embeddings"],
             "rms_norm_eps": hf["rms_norm_eps"], "hidden_act": "silu", "attention_bias": False,
             "mlp_bias": False, "tie_word_embeddings": False,
             "rope_parameters": {"rope_type": "default", "rope_theta": hf["rope_theta"]}}
    return {
        "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3,
                                  "verifier_accept_k": 1, "accept_tolerance": 0.0}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier,
                         "architectures": verifier_architectures or ["LlamaForCausalLM"]}},
        "transformer_layer_config": layer,
        "draft_vocab_size": hf["draft_vocab_size"], "target_hidden_size": hf["target_hidden_size"],
        "norm_before_residual": False, "norm_before_fc": False, "fc_norm": False,
        "norm_output": False, "embed_requires_grad": False,
        "eagle_aux_hidden_state_layer_ids": list(hf["target_layers"]),
    }


def export_speculators(source, out, *, verifier: str | None = None,
                       verifier_architectures: list[str] | None = None) -> dict[str, Any]:
    """Our draft as vLLM's speculators format (`layers.0.*`, eagle3 config). `verifier` is the
    target's HF id or local directory, written into the config for vLLM to pair them."""
    hf, state = _load_ours(Path(source))
    if hf["target_hidden_size"] != hf["hidden_size"]:
        raise DraftVocabError("speculators' EAGLE-3 fc reads 3 × the draft's hidden size; a draft "
                              f"with target_hidden_size {hf['target_hidden_size']} != hidden_size "
                              f"{hf['hidden_size']} cannot be exported to it")
    renamed = {(SPECULATORS_PREFIX + k[len(OUR_PREFIX):] if k.startswith(OUR_PREFIX) else k): v
               for k, v in state.items()}
    if hf["draft_vocab_size"] == hf["vocab_size"]:  # speculators keeps no mapping for k = V
        renamed.pop("d2t")
        renamed.pop("t2d")
    _write_checkpoint(out, speculators_config(hf, verifier, verifier_architectures), renamed)
    return {"format": "speculators", "draft_vocab_size": hf["draft_vocab_size"],
            "vocab_size": hf["vocab_size"], "verifier": verifier, "out": str(out)}


def frspec_ids(counts: np.ndarray, k: int) -> np.ndarray:
    """The k most frequent ids, most frequent first (ties: lower id first)."""
    from draftvocab.vocab.objective import frequency_order

    counts = np.asarray(counts)
    if not 1 <= k <= counts.size:
        raise DraftVocabError(f"k must be in [1, V={counts.size}], got {k}")
    return frequency_order(counts)[:k].astype(np.int64)


def export_frspec(counts: np.ndarray, k: int, out) -> dict[str, Any]:
    """FR-Spec's frequency-ranked token map: `torch.load(weights_only=True)` gives an int64
    tensor of k target ids, most frequent first (SGLang `--speculative-token-map`)."""
    import torch

    ids = frspec_ids(counts, k)
    out = Path(out)
    if out.suffix != ".pt":
        out = out / f"freq_{k}.pt"
    atomic_write(out, _torch_bytes(torch.from_numpy(ids)))
    return {"format": "frspec", "draft_vocab_size": int(k), "vocab_size": int(counts.size),
            "out": str(out)}
