"""The gate interface: one scoring method, the threshold comparison on the base class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
        mu_escalate: μ(escalate | o), the probability that this gate escalates on this input,
            whichever action it took (not the probability of the action taken): 1.0 or 0.0 for
            deterministic gates, ``rate`` for RandomGate, (1 − ε)·1{base escalates} + ε/2 for
            ExploringGate. Off-policy training reads it as the behaviour probability.
        cost: what the gate's own model calls cost on this decision, per tier as in the graph's
            ``costs`` (e.g. a judging pass of the next tier's model); the gate node adds it to
            the run's costs. Empty for gates that call no model.
    """

    escalate: bool
    score: float
    mu_escalate: float
    cost: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class GateOption:
    """An option a registered gate is built from, as the CLI offers it.

    Attributes:
        flag: the CLI flag (options of several gates may share one, e.g. ``--threshold``).
        type: how the CLI parses it.
        help: what it means for this gate, with its default.
    """

    flag: str
    type: type
    help: str


class Gate(ABC):
    """Maps a drafted step to accept / escalate: escalate iff ``score(x) >= threshold``.

    Subclasses implement ``score`` (higher means more reason to escalate) and set
    ``threshold``; stochastic gates override ``decide``.
    """

    name: str = "gate"
    """The gate's registry name (for a composed gate such as ExploringGate, a description)."""
    aliases: ClassVar[tuple[str, ...]] = ()
    """Former registry names that still find the gate."""
    options: ClassVar[Mapping[str, GateOption]] = {}
    """The options ``from_options`` takes, by keyword, with their CLI flags."""
    threshold: float = 0.5

    @classmethod
    def from_options(cls, **options: Any) -> Gate:
        """Build the gate from registry options (default: the constructor's keyword arguments)."""
        return cls(**options)

    @abstractmethod
    def score(self, x: GateInput) -> float:
        """The escalation score of a draft (higher: more reason to escalate)."""

    def decide(self, x: GateInput) -> GateDecision:
        score = self.score(x)
        escalate = score >= self.threshold
        return GateDecision(escalate, score, float(escalate))
