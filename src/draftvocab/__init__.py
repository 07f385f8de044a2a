"""draftvocab: choose, train and measure draft vocabularies for speculative decoding.

Public API (everything else is private). One call per command, each returning a result with
`to_json()` (what `draftvocab CMD --json` prints):

    count               data / preset -> CountResult (.counts: TokenCounts; saved to `out`)
    optimize            data or counts -> OptimizeRun (.k, .summary; the run directory)
    train               data + target -> a trained draft directory (EAGLE-3 or SpecBlock)
    generate            prompt + target (+ draft) -> text, speculatively decoded
    bench               drafts / peers / endpoints -> Spec-Bench tokens/s and accept length
    calibrate           draft + target -> calibration for `optimize(objective="speedup")`

The stages underneath, for finer control:

    read_conversations  dataset path / object -> re-iterable conversations
    ChatSpans           chat template -> the tokens the target generates (supervised masks)
    count_tokens        conversations -> TokenCounts (frequencies of generated tokens)
    flops_breakdown     HF config -> DraftFlops (per-token FLOPs of an EAGLE-3 draft)
    optimize_vocab      counts + DraftFlops -> OptimizeResult (k*, C, R, U)
    build_mapping       counts + k -> VocabMapping (SpecForge d2t / t2d)
    load_target         preset / .gguf / HF dir -> Target (logits + EAGLE-3 features)
    Eagle3Draft         the draft model; save_draft / load_draft (SpecForge format)
    regenerate          conversations + target -> the target's own answers (JSONL)
    train_draft         examples + target -> trained draft (training-time test)
    SpeculativeDecoder  target + draft -> lossless chain / tree speculative decoding
    SpecBlockDraft      SpecBlock drafter (K positions per forward); SpecBlockDecoder,
                        decoder_for (the right decoder for any draft), BudgetBandit

Imports are lazy so that `draftvocab --help` does not pay for torch/transformers.
"""

from importlib import import_module

from draftvocab.core.version import __version__

_EXPORTS = {
    "count": "api.vocab",
    "CountResult": "api.vocab",
    "optimize": "api.optimize",
    "OptimizeRun": "api.optimize",
    "train": "api.training",
    "generate": "api.decoding",
    "bench": "api.decoding",
    "calibrate": "api.measure",
    "read_conversations": "chat.conversations",
    "ChatSpans": "chat.spans",
    "count_tokens": "vocab.counts",
    "TokenCounts": "vocab.counts",
    "merge_counts": "vocab.counts",
    "flops_breakdown": "vocab.flops",
    "DraftFlops": "vocab.flops",
    "optimize_vocab": "vocab.optimize",
    "OptimizeResult": "vocab.optimize",
    "build_mapping": "vocab.mapping",
    "load_mapping": "vocab.mapping",
    "VocabMapping": "vocab.mapping",
    "DraftVocabError": "core.errors",
    "load_target": "engine.target",
    "Target": "engine.target",
    "Eagle3Draft": "engine.drafters",
    "DraftConfig": "engine.drafters",
    "save_draft": "engine.drafters",
    "load_draft": "engine.drafters",
    "regenerate": "engine.regenerate",
    "train_draft": "engine.train",
    "TrainConfig": "engine.train",
    "SpeculativeDecoder": "engine.decode",
    "SpecBlockDraft": "engine.drafters",
    "SpecBlockDecoder": "engine.blockdecode",
    "decoder_for": "engine.decode",
    "BudgetBandit": "engine.bandit",
}
__all__ = [  # noqa: RUF022 - same order as _EXPORTS
    "count", "CountResult", "optimize", "OptimizeRun", "train", "generate", "bench", "calibrate",
    "read_conversations", "ChatSpans", "count_tokens", "TokenCounts", "merge_counts",
    "flops_breakdown", "DraftFlops", "optimize_vocab", "OptimizeResult", "build_mapping",
    "load_mapping", "VocabMapping", "DraftVocabError", "load_target", "Target", "Eagle3Draft",
    "DraftConfig", "save_draft", "load_draft", "regenerate", "train_draft", "TrainConfig",
    "SpeculativeDecoder", "SpecBlockDraft", "SpecBlockDecoder", "decoder_for", "BudgetBandit",
    "__version__",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"draftvocab.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'draftvocab' has no attribute {name!r}")
