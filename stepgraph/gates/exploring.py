"""The behaviour gate for trace collection: a deterministic gate with ε-random exploration."""

from __future__ import annotations

import random

from stepgraph.gates.base import Gate, GateDecision, GateInput


class ExploringGate(Gate):
    """With probability ``epsilon`` a uniformly random action, else ``base``'s decision.

    So μ(escalate | o) = (1 − ε)·1{base escalates} + ε/2, and every action has probability at
    least ε/2, which off-policy training needs. ``GateDecision.probability`` is μ(escalate | o).

    Args:
        base: the gate explored around.
        epsilon: exploration rate in [0, 1].
        seed: seed of the exploration stream.
    """

    def __init__(self, base: Gate, epsilon: float = 0.3, seed: int | None = None) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}.")
        self.base, self.epsilon = base, epsilon
        self.name = f"exploring({base.name}, eps={epsilon})"
        self._rng = random.Random(seed)

    def score(self, x: GateInput) -> float:
        return self.base.score(x)

    def decide(self, x: GateInput) -> GateDecision:
        base = self.base.decide(x)
        mu = (1.0 - self.epsilon) * float(base.escalate) + self.epsilon / 2
        escalate = self._rng.random() < 0.5 if self._rng.random() < self.epsilon else base.escalate
        return GateDecision(escalate, base.score, mu)
