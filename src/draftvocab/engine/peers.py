"""Peers: other libraries' decoding, run under this project's benchmark protocol.

`HFGenerate` wraps transformers' own `generate` on the same loaded target — plainly, or with
prompt-lookup decoding (`prompt_lookup_num_tokens`: n-gram candidates copied from the prompt,
no draft model; Spec-Bench's PLD baseline). It has the decoder interface `bench` measures
(`generate(prompt_ids, max_new_tokens) -> GenerationResult`, `draft = None`), so a peer is one
more interleaved variant beside ours. Target forwards are counted with a forward hook, so τ
(tokens per target forward after the prefill) means the same for every variant.
"""

from __future__ import annotations

import time

import torch

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.decode import GenerationResult


class HFGenerate:
    """transformers' `generate` on `target`, greedy; with `prompt_lookup` > 0, prompt-lookup
    decoding proposing that many tokens per round.

    >>> pld = HFGenerate(target, prompt_lookup=10)
    >>> res = pld.generate(target.prompt_ids([{"role": "user", "content": "Hi"}]), 64)
    """

    draft = None

    def __init__(self, target, *, prompt_lookup: int = 0, max_ngram: int = 2):
        if prompt_lookup < 0 or max_ngram < 1:
            raise DraftVocabError("prompt lookup needs >= 0 tokens and an n-gram size >= 1")
        self.target, self.prompt_lookup, self.max_ngram = target, prompt_lookup, max_ngram
        self.draft_forwards = 0

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int = 128) -> GenerationResult:
        model, stops = self.target.model, list(self.target.stop_ids)
        ids = torch.tensor([list(prompt_ids)], device=self.target.device)
        marks: list[float] = []
        hook = model.register_forward_hook(lambda *a: marks.append(time.perf_counter()))
        extra = ({"prompt_lookup_num_tokens": self.prompt_lookup,
                  "max_matching_ngram_size": self.max_ngram} if self.prompt_lookup else {})
        t0 = time.perf_counter()
        try:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=stops[0], temperature=None, top_p=None,
                                 top_k=None, **extra)
        finally:
            hook.remove()
        seconds = time.perf_counter() - t0
        tokens = out[0, ids.shape[1]:].tolist()
        end = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
        tokens = tokens[:end]  # anything after the first stop would be padding
        forwards = max(len(marks) - 1, 0)
        prefill = marks[0] - t0 if marks else seconds
        return GenerationResult(
            tokens=tokens, accept_lengths=[len(tokens) - 1] if len(tokens) > 1 else [],
            target_forwards=forwards, target_seconds=seconds, prefill_seconds=prefill,
            seconds=seconds)
