"""Speculative decoding is lossless: greedy output equals the target's own greedy output token
for token (chain and tree, full and trimmed vocabularies), and sampled output follows the
target's distribution (chi-square against the exact distribution)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.drafters import DraftConfig, Eagle3Draft
from tests.conftest import chi2_critical, exact_joint, make_tiny_target

V = 8  # a tiny vocabulary: random drafts then agree with the target often enough to accept
KEEP = [0, 1, 2, 4, 5, 7]  # trimmed draft vocabulary (k = 6): ids 3 and 6 only via rejection


def _draft(target, keep=None, seed=1):
    torch.manual_seed(seed)
    if keep is None:
        draft = Eagle3Draft(DraftConfig.for_target(target), target.model.get_input_embeddings())
    else:
        t2d = torch.zeros(target.vocab_size, dtype=torch.bool)
        t2d[keep] = True
        d2t = torch.nonzero(t2d).flatten() - torch.arange(len(keep))
        draft = Eagle3Draft(DraftConfig.for_target(target, len(keep)),
                            target.model.get_input_embeddings(), d2t, t2d)
    return draft.to(target.dtype)


class OracleDraft(Eagle3Draft):
    """Proposes the target's known greedy continuation (wrong at every `wrong`-th position):
    long and partial acceptances on demand. Position p predicts the token at p + 2."""

    def __init__(self, base: Eagle3Draft, sequence: list[int], wrong: int = 4):
        super().__init__(base.config, base.embed_tokens, base.d2t, base.t2d)
        self.load_state_dict(base.state_dict())
        self.sequence, self.wrong = sequence, wrong
        self.to_draft = base.target_to_draft()

    def step(self, hidden, input_ids, positions, past_k=None, past_v=None, mask=None,
             rows=None):
        logits, h, k, v = super().step(hidden, input_ids, positions, past_k, past_v, mask)
        logits = torch.full_like(logits, -5.0)
        for r, p in enumerate(positions[0].tolist()):
            if p + 2 < len(self.sequence):
                tok = self.sequence[p + 2]
                if (p + 2) % self.wrong == 0:
                    tok = (tok + 1) % V
                if self.to_draft[tok] >= 0:
                    logits[0, r, self.to_draft[tok]] = 5.0
        return (logits if rows is None else logits[rows]), h, k, v


@pytest.fixture(scope="module")
def target():
    # float64 so that argmax never flips between 1-token and many-token forwards; a wide init
    # so that greedy output varies instead of repeating one token.
    return make_tiny_target(dtype=torch.float64, vocab_size=V, eos_token_id=None,
                            bos_token_id=None, initializer_range=0.5)


def _prompts(n):
    out = []
    for s in range(n):
        g = torch.Generator().manual_seed(s)
        out.append(torch.randint(0, V, (2 + s % 9,), generator=g).tolist())
    return out


@pytest.mark.parametrize("keep", [None, KEEP], ids=["full", "trimmed"])
@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
def test_greedy_is_the_targets_own_greedy_output(target, keep, tree):
    plain = SpeculativeDecoder(target)
    spec = SpeculativeDecoder(target, _draft(target, keep), tree=tree, depth=4, topk=3,
                              total_tokens=12, gamma=4)
    rounds_accepting = 0
    for prompt in _prompts(12):
        expected = plain.generate(prompt, 30, stop_at_eos=False)
        got = spec.generate(prompt, 30, stop_at_eos=False)
        assert got.tokens == expected.tokens, prompt
        assert expected.accept_lengths == [1] * 29  # plain: one token per forward
        assert sum(got.accept_lengths) == 29 and got.target_forwards == len(got.accept_lengths)
        rounds_accepting += sum(a > 1 for a in got.accept_lengths)
    assert rounds_accepting >= 1  # even a random draft is right now and then


@pytest.mark.parametrize("shape", [{"tree": False}, {"tree": True},
                                   {"tree": False, "adaptive": True}],
                         ids=["chain", "tree", "adaptive"])
def test_greedy_lossless_in_bf16(shape):
    """bf16 rounds every layer, so a verify row that differs from a one-token step in its last
    bit can flip a token; stepwise verify rows (`stepwise.py`) keep the output identical."""
    target = make_tiny_target(dtype=torch.bfloat16, vocab_size=V, eos_token_id=None,
                              bos_token_id=None, initializer_range=0.5)
    plain = SpeculativeDecoder(target)
    for prompt in _prompts(6):
        expected = plain.generate(prompt, 40, stop_at_eos=False).tokens
        draft = OracleDraft(_draft(target, KEEP), [*prompt, *expected], wrong=6)
        got = SpeculativeDecoder(target, draft, depth=4, topk=3, total_tokens=12, gamma=4,
                                 **shape).generate(prompt, 40, stop_at_eos=False)
        assert got.tokens == expected, prompt
        if shape.get("adaptive"):  # one-row verifies (its plain steps) and drafted rounds
            assert 0 < got.drafted_tokens and 1 in got.accept_lengths
        else:
            assert got.mean_accept_length > 1.5


@pytest.mark.parametrize("keep", [None, KEEP], ids=["full", "trimmed"])
@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
def test_greedy_lossless_with_long_and_partial_acceptance(target, keep, tree):
    plain = SpeculativeDecoder(target)
    for prompt in _prompts(6):
        expected = plain.generate(prompt, 40, stop_at_eos=False).tokens
        draft = OracleDraft(_draft(target, keep), [*prompt, *expected], wrong=6)
        got = SpeculativeDecoder(target, draft, tree=tree, depth=4, topk=3, total_tokens=12,
                                 gamma=4).generate(prompt, 40, stop_at_eos=False)
        assert got.tokens == expected, prompt
        # Accepting several drafted tokens per forward, but not all: the KV cache is cut back
        # after partial acceptance many times.
        assert got.mean_accept_length > 1.5
        assert min(got.accept_lengths[:-1]) < max(got.accept_lengths)


@pytest.mark.parametrize("shape", [{}, {"tree": False}, {"tree": True},
                                   {"tree": False, "adaptive": True}],
                         ids=["no-draft", "chain", "tree", "adaptive"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
def test_greedy_lossless_with_lookup_rounds(shape, dtype):
    """Rounds that verify context-copied tokens (`lookup`), with or without a draft, keep the
    output the target's own; with a draft, the draft catches up on those rounds' features."""
    target = make_tiny_target(dtype=dtype, vocab_size=V, eos_token_id=None,
                              bos_token_id=None, initializer_range=0.5)
    plain = SpeculativeDecoder(target)
    lookup_rounds = drafted_rounds = 0
    for prompt in _prompts(6):
        expected = plain.generate(prompt, 40, stop_at_eos=False).tokens
        draft = (OracleDraft(_draft(target, KEEP), [*prompt, *expected], wrong=3)
                 if shape else None)
        dec = SpeculativeDecoder(target, draft, depth=4, topk=3, total_tokens=12, gamma=3,
                                 lookup=4, **shape)
        covered = []  # the positions each draft catch-up feeds: together, 0, 1, 2, ...
        catch_up = dec._catch_up

        def recording(feats, tokens, pending_from, dk, dv, catch_up=catch_up, covered=covered):
            covered.extend(range(pending_from, pending_from + feats.shape[0]))
            return catch_up(feats, tokens, pending_from, dk, dv)

        dec._catch_up = recording
        got = dec.generate(prompt, 40, stop_at_eos=False)
        assert got.tokens == expected, prompt
        assert sum(got.accept_lengths) == 39 and got.target_forwards == len(got.accept_lengths)
        lookup_rounds += got.lookup_rounds
        drafted_rounds += got.target_forwards - got.lookup_rounds
        if draft is not None:  # lookup rounds' features reach the draft at its next catch-up
            assert covered == list(range(len(covered))) and len(covered) > len(prompt)
    # a vocabulary of 8: the context repeats its n-grams, so both kinds of round happen
    assert lookup_rounds >= 20 and drafted_rounds >= 20


def test_lookup_is_off_when_sampling(target):
    dec = SpeculativeDecoder(target, _draft(target), tree=False, gamma=2, lookup=4)
    got = dec.generate([1, 2, 1, 2, 1, 2], 20, temperature=1.0, seed=0, stop_at_eos=False)
    assert got.lookup_rounds == 0 and len(got.tokens) == 20


def test_greedy_matches_transformers_generate(target):
    prompt = [3, 1, 4, 1, 5]
    ref = target.model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                min_new_tokens=20)[0, len(prompt):].tolist()
    got = SpeculativeDecoder(target, _draft(target), tree=True).generate(
        prompt, 20, stop_at_eos=False)
    assert got.tokens == ref


def test_stops_at_eos_and_max_new_tokens():
    target = make_tiny_target(dtype=torch.float64, vocab_size=V, eos_token_id=None,
                              bos_token_id=None)
    plain = SpeculativeDecoder(target).generate([1, 2, 3], 30, stop_at_eos=False).tokens
    eos = plain[5]
    target.config.eos_token_id = eos
    for draft in (None, _draft(target)):
        out = SpeculativeDecoder(target, draft).generate([1, 2, 3], 30).tokens
        assert out == plain[: plain.index(eos) + 1]
        assert len(SpeculativeDecoder(target, draft).generate([1, 2, 3], 7,
                                                               stop_at_eos=False).tokens) == 7


@pytest.mark.parametrize("keep, tree, top_p", [(KEEP, False, 1.0), (None, False, 1.0),
                                                (KEEP, True, 1.0), (None, True, 0.9)],
                         ids=["trimmed-chain", "full-chain", "trimmed-tree", "full-tree-top_p"])
def test_sampling_follows_the_targets_distribution(target, keep, tree, top_p):
    prompt, n, temperature, runs = [2, 7, 1], 3, 0.7, 600
    exact = exact_joint(target, prompt, n, temperature, top_p)
    # tree: 3 i.i.d. children of the root, each expanded into 3 more (12 nodes, depth 2)
    spec = SpeculativeDecoder(target, _draft(target, keep), tree=tree, gamma=2, depth=3, topk=3,
                              total_tokens=12)
    seen, accepted = Counter(), 0
    for seed in range(runs):
        res = spec.generate(prompt, n, temperature=temperature, top_p=top_p, seed=seed,
                            stop_at_eos=False)
        seen[tuple(res.tokens)] += 1
        accepted += max(res.accept_lengths) > 1
    assert accepted > runs // 10  # draft tokens were accepted, not only resampled
    # x2 and x3 come from one speculative round (x1 from the prefill): test their joint.
    pairs, expected_pairs = Counter(), Counter()
    for seq, c in seen.items():
        pairs[seq[1:]] += c
    for seq, p in exact.items():
        expected_pairs[seq[1:]] += p * runs
    cells = [k for k in expected_pairs if expected_pairs[k] >= 5]
    chi2 = sum((pairs[k] - expected_pairs[k]) ** 2 / expected_pairs[k] for k in cells)
    assert chi2 < chi2_critical(len(cells) - 1), chi2


def test_bad_inputs_are_clear_errors(target):
    dec = SpeculativeDecoder(target, _draft(target))
    with pytest.raises(DraftVocabError, match="exceeds the target's context"):
        dec.generate([1] * 500, 100)
    with pytest.raises(DraftVocabError, match="empty prompt"):
        dec.generate([], 5)
    with pytest.raises(DraftVocabError, match="temperature"):
        dec.generate([1], 5, temperature=-1)
    other = make_tiny_target(dtype=torch.float64, vocab_size=V, hidden_size=32, head_dim=8,
                             eos_token_id=None, bos_token_id=None)
    with pytest.raises(DraftVocabError, match="does not fit the target"):
        SpeculativeDecoder(other, _draft(target))


def test_sliding_window_targets_are_refused():
    """Rejected tree rows are cut from the KV cache by position: only full-attention layers."""
    from transformers import MistralConfig, MistralForCausalLM

    from draftvocab.engine.target import Target

    tok = make_tiny_target().tokenizer
    model = MistralForCausalLM(MistralConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tok), sliding_window=16))
    with pytest.raises(DraftVocabError, match="full-attention KV caches"):
        SpeculativeDecoder(Target(model, tok))
