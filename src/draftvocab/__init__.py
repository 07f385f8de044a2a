"""draftvocab: choose, train and measure draft vocabularies for speculative decoding.

Public API (everything else is private):

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

__version__ = "0.1.0"

_EXPORTS = {
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
    "Eagle3Draft": "engine.draft",
    "DraftConfig": "engine.draft",
    "save_draft": "engine.draft",
    "load_draft": "engine.draft",
    "regenerate": "engine.regenerate",
    "train_draft": "engine.train",
    "TrainConfig": "engine.train",
    "SpeculativeDecoder": "engine.decode",
    "SpecBlockDraft": "engine.specblock",
    "SpecBlockDecoder": "engine.blockdecode",
    "decoder_for": "engine.blockdecode",
    "BudgetBandit": "engine.bandit",
}
__all__ = [  # noqa: RUF022 - same order as _EXPORTS
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
