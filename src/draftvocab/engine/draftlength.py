"""Chain length chosen every round from measured costs and recent acceptance.

A fixed γ suits one draft on one machine: drafting a token costs a draft step and one more row
in the verify forward, and pays only while the draft is right often enough. Every round already
tells, for free, how many of the γ drafted tokens were accepted and how long drafting and
verifying took. From that, per depth j, the conditional acceptance p_j = P(token j accepted |
tokens before j accepted) (discounted counts, so it follows the request mix), and per γ the
seconds of a round (discounted mean; a γ not measured yet is tried once). The choice maximises
expected tokens per second:

    (1 + Σ_{i≤γ} Π_{j≤i} p_j) / seconds(γ),

with γ = 0 a plain target step, so a draft that does not pay here is switched off rather
than slowing decoding down. Acceptance beyond the current γ can only be learnt by drafting it,
so every `probe` rounds one token more than the choice is drafted. transformers adapts its
assistant's length by a heuristic (`update_candidate_strategy`: +2 after a fully accepted
round, −1 otherwise); this one uses the measured costs, so it also knows when to stop drafting.

    >>> length = AdaptiveLength(max_gamma=4)
    >>> g = length.choose(); ...; length.observe(g, accepted=1, seconds=0.051)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AdaptiveLength:
    max_gamma: int
    discount: float = 0.97  # old observations fade: a memory of about 1 / (1 - discount)
    probe: int = 8  # every `probe` rounds draft one token more than the choice
    prior: tuple[float, float] = (1.0, 2.0)  # pseudo-counts (accepted, tried) of each depth
    accepted: list[float] = field(default_factory=list)  # per depth 1..max_gamma
    tried: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # per γ 0..max_gamma: discounted sums
    weight: list[float] = field(default_factory=list)
    rounds: int = 0
    history: list[int] = field(default_factory=list)  # γ of every round

    def __post_init__(self):
        if self.max_gamma < 1:
            raise ValueError("max_gamma must be >= 1")
        n = self.max_gamma
        self.accepted = self.accepted or [0.0] * n
        self.tried = self.tried or [0.0] * n
        self.seconds = self.seconds or [0.0] * (n + 1)
        self.weight = self.weight or [0.0] * (n + 1)

    def acceptance(self, depth: int) -> float:
        """p_depth: the chance token `depth` is accepted once the tokens before it were."""
        a, n = self.prior
        return (self.accepted[depth - 1] + a) / (self.tried[depth - 1] + n)

    def expected_tokens(self, gamma: int) -> float:
        """Tokens a round with γ drafted tokens gains, on average (the target's own included)."""
        total, reach = 1.0, 1.0
        for depth in range(1, gamma + 1):
            reach *= self.acceptance(depth)
            total += reach
        return total

    def round_seconds(self, gamma: int) -> float | None:
        return self.seconds[gamma] / self.weight[gamma] if self.weight[gamma] else None

    def choose(self) -> int:
        self.rounds += 1
        untried = [g for g in range(self.max_gamma, -1, -1) if not self.weight[g]]
        if untried:
            gamma = untried[0]
        else:
            gamma = max(range(self.max_gamma + 1),
                        key=lambda g: self.expected_tokens(g) / self.round_seconds(g))
            if gamma < self.max_gamma and self.rounds % self.probe == 0:
                gamma += 1
        self.history.append(gamma)
        return gamma

    def observe(self, gamma: int, accepted: int, seconds: float) -> None:
        """One round: γ drafted, the first `accepted` of them accepted, draft + verify time."""
        d = self.discount  # per observation of that depth / that γ, not per round: a depth
        # drafted only by probes keeps what the probes saw instead of fading into the prior
        for depth in range(1, min(accepted + 1, gamma) + 1):
            self.tried[depth - 1] = d * self.tried[depth - 1] + 1.0
            self.accepted[depth - 1] = d * self.accepted[depth - 1] + (depth <= accepted)
        self.seconds[gamma] = d * self.seconds[gamma] + seconds
        self.weight[gamma] = d * self.weight[gamma] + 1.0
