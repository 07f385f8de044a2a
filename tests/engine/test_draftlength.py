"""Adaptive chain length: the choice follows measured costs and acceptance, and decoding with it
stays lossless (greedy = the target's own output)."""

from __future__ import annotations

import pytest

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.draftlength import AdaptiveLength
from tests.engine.test_acceptance import target  # noqa: F401  (fixture)
from tests.engine.test_decode import KEEP, OracleDraft, _draft, _prompts


def _feed(length: AdaptiveLength, rounds: int, accept_p: float, cost) -> None:
    """Rounds in which each drafted token is accepted with chance accept_p (deterministic
    pattern) and a round with γ tokens takes cost(γ) seconds."""
    for r in range(rounds):
        g = length.choose()
        accepted = 0
        while accepted < g and ((r * 7 + accepted * 3) % 100) < 100 * accept_p:
            accepted += 1
        length.observe(g, accepted, cost(g))


def test_tries_every_length_once_first():
    length = AdaptiveLength(max_gamma=3)
    _feed(length, 4, 0.5, lambda g: 1.0 + g)
    assert length.history == [3, 2, 1, 0]


def test_a_draft_that_is_always_right_drafts_the_longest_chain():
    length = AdaptiveLength(max_gamma=4)
    _feed(length, 200, 1.0, lambda g: 1.0 + 0.1 * g)
    assert length.history[-50:].count(4) == 50
    assert length.expected_tokens(4) > 4.5


def test_a_draft_that_is_never_right_is_switched_off_but_probed():
    length = AdaptiveLength(max_gamma=4, probe=8)
    _feed(length, 200, 0.0, lambda g: 1.0 + 0.1 * g)
    recent = length.history[-80:]
    assert recent.count(0) >= 65 and recent.count(1) >= 8  # γ=0, and a probe every 8 rounds
    assert length.acceptance(1) < 0.1


def test_expensive_verification_shortens_the_chain():
    cheap, dear = AdaptiveLength(max_gamma=4), AdaptiveLength(max_gamma=4)
    _feed(cheap, 300, 0.6, lambda g: 1.0 + 0.05 * g)
    _feed(dear, 300, 0.6, lambda g: 1.0 + 0.8 * g)
    assert (sum(dear.history[-100:]) / 100) < (sum(cheap.history[-100:]) / 100)
    assert dear.history[-100:].count(0) > 50


@pytest.mark.parametrize("keep", [None, KEEP], ids=["full", "trimmed"])
def test_adaptive_decoding_is_lossless(target, keep):  # noqa: F811
    plain = SpeculativeDecoder(target)
    chosen = set()
    for prompt in _prompts(6):
        expected = plain.generate(prompt, 40, stop_at_eos=False).tokens
        for draft in (_draft(target, keep), OracleDraft(_draft(target, keep),
                                                         [*prompt, *expected], wrong=6)):
            dec = SpeculativeDecoder(target, draft, tree=False, gamma=4, adaptive=True)
            got = dec.generate(prompt, 40, stop_at_eos=False)
            assert got.tokens == expected, prompt
            assert sum(got.accept_lengths) == 39
            chosen |= set(dec.length.history)
    assert {0, 4} <= chosen  # plain steps and full chains both happened


def test_adaptive_needs_a_chain_and_a_draft(target):  # noqa: F811
    with pytest.raises(DraftVocabError, match="chain"):
        SpeculativeDecoder(target, _draft(target), tree=True, adaptive=True)
    with pytest.raises(DraftVocabError, match="chain"):
        SpeculativeDecoder(target, None, tree=False, adaptive=True)
