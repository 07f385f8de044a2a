"""transformers' own decoding as benchmark peers: the same greedy output as ours, forwards
counted the same way, and prompt lookup saving forwards where the answer copies the prompt."""

from __future__ import annotations

import pytest

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.peers import HFGenerate
from draftvocab.engine.target import load_target
from tests.conftest import make_tiny_target


def test_hf_generate_and_prompt_lookup_equal_our_plain_greedy_on_a_random_target():
    tiny = make_tiny_target(seed=3)
    ours, hf, pld = SpeculativeDecoder(tiny), HFGenerate(tiny), HFGenerate(tiny, prompt_lookup=4)
    for text in ("Hello", "Tell me a story about a dragon and a dragon and a dragon"):
        prompt = tiny.prompt_ids([{"role": "user", "content": text}])
        want = ours.generate(prompt, 24)
        for dec in (hf, pld):
            got = dec.generate(prompt, 24)
            assert got.tokens == want.tokens
            assert 1 <= got.target_forwards <= len(got.tokens) - 1
            assert sum(got.accept_lengths) == len(got.tokens) - 1
            assert 0 < got.prefill_seconds <= got.seconds
        assert hf.generate(prompt, 24).target_forwards == want.target_forwards
    with pytest.raises(DraftVocabError, match="prompt lookup"):
        HFGenerate(tiny, prompt_lookup=-1)


def test_prompt_lookup_saves_target_forwards_when_the_answer_copies_the_prompt():
    smol = load_target("smollm2-135m")
    text = ("Repeat this sentence exactly, word for word: the quick brown fox jumps over the "
            "lazy dog while the small red hen watches from the old wooden fence.")
    prompt = smol.prompt_ids([{"role": "user", "content": text}])
    plain, pld = HFGenerate(smol).generate(prompt, 32), HFGenerate(
        smol, prompt_lookup=10).generate(prompt, 32)
    assert pld.tokens == plain.tokens
    assert pld.target_forwards < plain.target_forwards * 0.7  # several tokens per forward
