"""Held-out τ: replaying chain drafting over the target's own greedy text gives exactly the
accept lengths the decoder gets on the same prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from draftvocab.engine.acceptance import chain_tau, first_token_outcomes, prepare_heldout, replay
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.train import Example
from tests.conftest import make_tiny_target
from tests.engine.test_decode import KEEP, OracleDraft, V, _draft, _prompts

N_NEW = 30


@pytest.fixture(scope="module")
def target():  # test_decode's: float64, an 8-token vocabulary (random drafts get accepted)
    return make_tiny_target(dtype=torch.float64, vocab_size=V, eos_token_id=None,
                            bos_token_id=None, initializer_range=0.5)


def _greedy(target, prompt):
    return SpeculativeDecoder(target).generate(prompt, N_NEW, stop_at_eos=False).tokens


def _example(prompt, reply) -> Example:
    ids = np.array([*prompt, *reply], dtype=np.int64)
    return Example(ids, np.arange(len(ids)) >= len(prompt))


def _decoded(target, draft, prompts, gamma):
    dec = SpeculativeDecoder(target, draft, tree=False, gamma=gamma)
    lengths = []
    for p in prompts:
        lengths += dec.generate(p, N_NEW, stop_at_eos=False).accept_lengths
    return sum(lengths), len(lengths)


@pytest.mark.parametrize("keep", [None, KEEP], ids=["full", "trimmed"])
@pytest.mark.parametrize("gamma", [1, 3])
def test_replay_equals_decoding_with_a_random_draft(target, keep, gamma):
    prompts = _prompts(5)
    draft = _draft(target, keep)
    held = prepare_heldout(target, [_example(p, _greedy(target, p)) for p in prompts],
                           batch_size=3)
    got = chain_tau(draft, held, gamma)
    tokens, rounds = _decoded(target, draft, prompts, gamma)
    assert got["rounds"] == rounds and got["tau"] == pytest.approx(tokens / rounds)
    assert tokens == len(prompts) * (N_NEW - 1)
    assert len(got["acc"]) == gamma and 0 <= got["acc"][0] <= 1


@pytest.mark.parametrize("keep", [None, KEEP], ids=["full", "trimmed"])
def test_replay_equals_decoding_with_long_and_partial_acceptance(target, keep):
    for prompt in _prompts(4):
        reply = _greedy(target, prompt)
        draft = OracleDraft(_draft(target, keep), [*prompt, *reply], wrong=5)
        held = prepare_heldout(target, [_example(prompt, reply)], batch_size=1)
        got = chain_tau(draft, held, gamma=4)
        tokens, rounds = _decoded(target, draft, [prompt], gamma=4)
        assert got["rounds"] == rounds and got["tau"] == pytest.approx(tokens / rounds)
        assert got["tau"] > 1.5  # long acceptances happened, so the walk was exercised


def test_replay_walks_rounds_and_cuts_the_last():
    # one reply at [2, 9): token 2 from the prefill, then 6 tokens by rounds
    supervised = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
    correct = np.zeros((2, 9), dtype=bool)
    correct[:, 1] = True  # round at n=2 accepts 2 -> gains 3, n=5
    correct[0, 4] = True  # round at n=5 accepts 1 -> gains 2, n=7
    correct[:, 6] = True  # round at n=7 would gain 3 but only 1 token is left
    assert replay(correct, supervised) == (6, 3)
    assert replay(np.zeros((2, 9), dtype=bool), supervised) == (6, 6)


def test_eval_keeps_the_drafts_mode(target):
    draft = _draft(target).train()
    held = prepare_heldout(target, [_example(p, _greedy(target, p)) for p in _prompts(2)])
    chain_tau(draft, held, 2)
    assert draft.training


def test_first_token_outcomes_split_acc0_into_vocabulary_and_prediction(target):
    """Counted by brute force over each reply: the positions and hits are chain_tau's acc@0,
    `outside` the target tokens a trimmed vocabulary lacks, `outside_in_context` those that
    already occurred in the prompt or the reply before them."""
    prompts = _prompts(6)
    draft = _draft(target, KEEP)
    examples = [_example(p, _greedy(target, p)) for p in prompts]
    examples.insert(2, _example([1], _greedy(target, [1])[:1]))  # nothing to draft in it
    held = prepare_heldout(target, examples, batch_size=4)
    got = first_token_outcomes(draft, held)
    assert got[2]["positions"] == 0
    assert len(got) == len(examples)
    acc0 = sum(o["right"] for o in got) / sum(o["positions"] for o in got)
    assert acc0 == pytest.approx(chain_tau(draft, held, 1)["acc"][0])
    for outcome, example in zip(got, examples, strict=True):
        ids, sup = example.ids.tolist(), example.supervised
        wanted = [(p, ids[p + 2]) for p in range(len(ids) - 2) if sup[p + 1] and sup[p + 2]]
        outside = [(p, w) for p, w in wanted if w not in KEEP]
        assert outcome["positions"] == len(wanted)
        assert outcome["outside"] == len(outside)
        assert outcome["outside_in_context"] == sum(w in ids[:p + 2] for p, w in outside)
    assert sum(o["outside"] for o in got) > sum(o["outside_in_context"] for o in got) > 0
