"""Cost-aware bandit over SpecBlock drafting budgets, driven by the verifier's free feedback.

The published SpecBlock code has no bandit; this is our design. Every verify round already
tells us, at no extra cost, how many tokens the round gained and how long drafting plus
verification took. The bandit's arms are drafting budgets (blocks, branch): more blocks reach
deeper, more branch adds siblings, and both cost drafter and verifier time. Its reward is the
round's throughput, tokens / (draft + verify seconds), so a budget that accepts more but
costs more than it gains loses: that is the cost-awareness. Choice is discounted UCB
(Garivier & Moulines 2011; old rounds fade with `discount`, so the bandit follows a shift in
the request mix), and a switch away from the incumbent happens only when the challenger's
optimistic estimate beats the incumbent's by `switch_margin` (a re-plan is not free: a
new budget changes tree shapes and kernel sizes) — a hysteresis that stops flip-flopping
between near-equal arms. Rewards are scaled by a running mean so the
exploration constant means the same on any hardware.

Updating the drafter's weights online (the paper's other option) is not implemented: on this
CPU a backward pass costs several rounds' worth of decoding, so no gain we could measure
would pay for it; see the README.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_ARMS = ((1, 1), (1, 4), (2, 1), (2, 4), (3, 4))


@dataclass
class BudgetBandit:
    arms: tuple[tuple[int, int], ...] = DEFAULT_ARMS  # (blocks, branch)
    discount: float = 0.98
    explore: float = 0.1  # tuned by benchmarks/sim_bandit.py on measured arm costs
    switch_margin: float = 0.05  # in units of the mean throughput
    counts: list[float] = field(default_factory=list)  # discounted pulls per arm
    sums: list[float] = field(default_factory=list)  # discounted (scaled) rewards per arm
    scale: float = 0.0  # running mean of raw rewards (tokens / s)
    rounds: int = 0
    incumbent: int | None = None
    history: list[int] = field(default_factory=list)  # arm of every round

    def __post_init__(self):
        if not self.arms:
            raise ValueError("the bandit needs at least one arm")
        self.counts = self.counts or [0.0] * len(self.arms)
        self.sums = self.sums or [0.0] * len(self.arms)

    def select(self) -> int:
        untried = [a for a, n in enumerate(self.counts) if n == 0]
        if untried:
            arm = untried[0]
        else:
            total = sum(self.counts)
            means = [s / n for s, n in zip(self.sums, self.counts, strict=True)]
            ucb = [m + self.explore * math.sqrt(2 * math.log(max(total, 1.0)) / n)
                   for m, n in zip(means, self.counts, strict=True)]
            best = max(range(len(ucb)), key=ucb.__getitem__)
            inc = self.incumbent if self.incumbent is not None else best
            arm = best if ucb[best] > ucb[inc] + self.switch_margin else inc
        self.incumbent = arm
        self.history.append(arm)
        return arm

    def update(self, arm: int, tokens: int, seconds: float) -> None:
        reward = tokens / max(seconds, 1e-9)
        self.rounds += 1
        self.scale += (reward - self.scale) / min(self.rounds, 50)  # running mean, then EMA
        self.counts = [n * self.discount for n in self.counts]
        self.sums = [s * self.discount for s in self.sums]
        self.counts[arm] += 1.0
        self.sums[arm] += reward / max(self.scale, 1e-9)

    def summary(self) -> dict:
        """Share of rounds per arm, for reports."""
        n = max(len(self.history), 1)
        return {f"blocks={b},branch={w}": self.history.count(a) / n
                for a, (b, w) in enumerate(self.arms)}
