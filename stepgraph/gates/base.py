"""The gate interface: one scoring method, the threshold comparison on the base class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from stepgraph.features import Observation
from stepgraph.models.base import StepOutput


@dataclass(frozen=True)
class GateInput:
    """What a gate may look at when deciding on a drafted step.

    Attributes:
        question: the question being answered.
        steps: the steps accepted so far (the draft is not among them).
        draft: the drafted step with its token statistics.
        observation: the draft's features, keyed by CONFIDENCE_SCHEMA's names.
        tier: the tier that wrote the draft (0 = the cheapest model).
    """

    question: str
    steps: tuple[str, ...]
    draft: StepOutput
    observation: Observation
    tier: int = 0


@dataclass(frozen=True)
class GateDecision:
    """A gate's verdict on one draft.

    Attributes:
        escalate: whether the next tier should regenerate the step.
        score: the escalation score that was compared with the threshold.
        probability: μ(escalate | o), the probability that this gate escalates on this input,
            whichever action it took (not the probability of the action taken): 1.0 or 0.0 for
            deterministic gates, ``rate`` for RandomGate, (1 − ε)·1{base escalates} + ε/2 for
            ExploringGate. Off-policy training reads it as the behaviour probability.
    """

    escalate: bool
    score: float
    probability: float


class Gate(ABC):
    """Maps a drafted step to accept / escalate: escalate iff ``score(x) >= threshold``.

    Subclasses implement ``score`` (higher means more reason to escalate) and set
    ``threshold``; stochastic gates override ``decide``.
    """

    name: str = "gate"
    threshold: float = 0.5

    @abstractmethod
    def score(self, x: GateInput) -> float:
        """The escalation score of a draft (higher: more reason to escalate)."""

    def decide(self, x: GateInput) -> GateDecision:
        score = self.score(x)
        escalate = score >= self.threshold
        return GateDecision(escalate, score, float(escalate))
