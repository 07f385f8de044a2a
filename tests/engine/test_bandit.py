"""The cost-aware budget bandit: it finds the arm with the best throughput (not the best
acceptance), follows a shift in which arm is best, and does not flip-flop between equals."""

from __future__ import annotations

import random

from draftvocab.engine.bandit import BudgetBandit


def _serve(bandit, rounds, tokens_and_seconds, rng):
    """tokens_and_seconds[arm] = (mean tokens per round, seconds per round); noisy rounds."""
    for _ in range(rounds):
        arm = bandit.select()
        tokens, seconds = tokens_and_seconds[arm]
        got = max(1, round(rng.gauss(tokens, 0.5)))
        bandit.update(arm, got, seconds * rng.uniform(0.9, 1.1))


def _share(bandit, arm, last):
    tail = bandit.history[-last:]
    return tail.count(arm) / len(tail)


def test_prefers_throughput_over_acceptance():
    """Arm 2 accepts the most tokens per round but costs 3x the time: arm 1 wins on tok/s."""
    rng = random.Random(0)
    bandit = BudgetBandit(arms=((1, 1), (1, 4), (3, 4)))
    _serve(bandit, 400, {0: (1.5, 0.05), 1: (2.5, 0.06), 2: (4.0, 0.15)}, rng)
    assert _share(bandit, 1, 200) > 0.7


def test_follows_a_shift():
    rng = random.Random(1)
    bandit = BudgetBandit(arms=((1, 1), (2, 4)))
    _serve(bandit, 300, {0: (2.0, 0.05), 1: (2.2, 0.08)}, rng)  # mix A: the cheap arm
    assert _share(bandit, 0, 100) > 0.7
    _serve(bandit, 300, {0: (2.0, 0.05), 1: (5.0, 0.08)}, rng)  # mix B: the deep arm pays
    assert _share(bandit, 1, 100) > 0.7


def test_no_flip_flop_between_equal_arms():
    rng = random.Random(2)
    bandit = BudgetBandit(arms=((1, 1), (1, 4)))
    _serve(bandit, 400, {0: (2.0, 0.05), 1: (2.0, 0.05)}, rng)
    switches = sum(a != b for a, b in zip(bandit.history, bandit.history[1:], strict=False))
    assert switches < 100
    assert abs(sum(bandit.summary().values()) - 1.0) < 1e-9
