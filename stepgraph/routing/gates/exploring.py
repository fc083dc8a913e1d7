"""The behaviour gate for offline trace collection: a gate with ε-random exploration."""

from __future__ import annotations

import random

from stepgraph.errors import GateConfigError
from stepgraph.routing.gates.base import Gate, GateDecision, GateInput


class ExploringGate(Gate):
    """With probability ``epsilon`` a uniformly random action, else ``base``'s decision.

    Off-policy training reweights each recorded step by π(a | o) / μ(a | o), so the behaviour
    policy μ must give every action a known, non-zero probability. Exploring around a sensible
    base gate (rather than escalating at random) keeps the traces close to the policies worth
    learning. For a deterministic base

        μ(escalate | o) = (1 − ε)·1{base escalates} + ε/2,

    so each action has probability at least ε/2. For a stochastic base (e.g. ``RandomGate``)
    the indicator becomes the base's own escalation probability.

    ``decide`` samples the action and returns ``GateDecision(escalate, score, mu_escalate)``
    where ``score`` is the base gate's score and ``mu_escalate`` is always μ(escalate | o), the
    probability of *escalating*, whichever action was drawn; μ(accept | o) = 1 − mu_escalate.

    Args:
        base: the gate explored around.
        epsilon: exploration rate in [0, 1] (0: the base gate; 1: uniformly random actions).
        seed: seed of the exploration stream (None: unseeded).

    Example:
        >>> from stepgraph.routing.gates.simple import AlwaysDraftGate
        >>> ExploringGate(AlwaysDraftGate(), epsilon=0.2, seed=0).name
        'exploring(never-escalate, eps=0.2)'
    """

    def __init__(self, base: Gate, epsilon: float = 0.2, seed: int | None = None) -> None:
        if not 0.0 <= epsilon <= 1.0:  # also rejects NaN
            raise GateConfigError(f"epsilon is an exploration probability in [0, 1], got {epsilon}.")
        self.base, self.epsilon = base, float(epsilon)
        self.threshold = base.threshold
        self.name = f"exploring({base.name}, eps={epsilon})"
        self._rng = random.Random(seed)

    def score(self, x: GateInput) -> float:
        return self.base.score(x)

    def decide(self, x: GateInput) -> GateDecision:
        base = self.base.decide(x)
        if base.reason is not None:  # a forced escalation (non-finite input) is not explored around
            return base
        mu = (1.0 - self.epsilon) * base.mu_escalate + self.epsilon / 2
        explore = self._rng.random() < self.epsilon
        escalate = self._rng.random() < 0.5 if explore else base.escalate
        return GateDecision(escalate, base.score, mu, base.reason, base.cost)
