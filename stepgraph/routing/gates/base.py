"""The gate interface: one scoring method, the threshold comparison on the base class.

A score or feature that is not a finite number (NaN, ±inf: a broken model or scorer) cannot be
compared with a threshold: ``Gate.decide`` escalates it, the safe side, and records why in
``GateDecision.reason``. Every gate inherits this; gates differ only in ``decide_on_score``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from stepgraph.features import Observation
from stepgraph.models.base import StepOutput

if TYPE_CHECKING:
    from stepgraph.domain import Domain


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
        reason: why the gate escalated without comparing a score (e.g. ``"non-finite score"``);
            None for an ordinary decision.
        cost: what the gate's own model calls cost on this decision, per tier as in the graph's
            ``costs`` (e.g. a judging pass of the next tier's model); the gate node adds it to
            the run's costs. Empty for gates that call no model.
        tier: the tier to escalate to, for gates that choose one (a K-tier policy); None means
            the next tier up. Ignored unless ``escalate``.
    """

    escalate: bool
    score: float
    mu_escalate: float
    reason: str | None = None
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    tier: int | None = None


def non_finite_features(observation: Observation) -> list[str]:
    """Names of features whose value is NaN or ±inf (None means "not reported" and is allowed)."""
    return [name for name, value in observation.items() if value is not None and not math.isfinite(value)]


def non_finite_token_statistics(step: StepOutput) -> list[str]:
    """Which of the draft's per-token statistics hold NaN or ±inf anywhere, not only at the math tokens the
    features read: a sampled token of log-probability −inf is a broken backend, whatever the features say."""
    rows = {"token_logprobs": step.token_logprobs, "max_logits": step.max_logits}
    return [name for name, row in rows.items() if row and not all(math.isfinite(v) for v in row)]


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
    ``threshold``; gates with another comparison, or stochastic ones, override
    ``decide_on_score``. ``decide`` escalates non-finite features and scores before any of it.
    """

    name: str = "gate"
    """The gate's registry name (for a composed gate such as ExploringGate, a description)."""
    aliases: ClassVar[tuple[str, ...]] = ()
    """Former registry names that still find the gate."""
    options: ClassVar[Mapping[str, GateOption]] = {}
    """The options ``from_options`` takes, by keyword, with their CLI flags."""
    threshold: float = 0.5
    domain: Domain | None = None
    """The out-of-domain signal calibrated with this gate (``stepgraph.domain``), from its artifact; None: off."""
    reads_features: bool = True
    """False for gates whose decision ignores the observation (fixed, random, oracle): a
    non-finite feature then changes nothing, and baselines keep their documented behaviour."""

    @classmethod
    def from_options(cls, **options: Any) -> Gate:
        """Build the gate from registry options (default: the constructor's keyword arguments)."""
        return cls(**options)

    @abstractmethod
    def score(self, x: GateInput) -> float:
        """The escalation score of a draft (higher: more reason to escalate)."""

    def decide(self, x: GateInput) -> GateDecision:
        """Escalate on non-finite features or score (recording why), else ``decide_on_score``."""
        if self.reads_features and (bad := non_finite_features(x.observation)):
            return GateDecision(True, math.nan, 1.0, f"non-finite features: {', '.join(bad)}")
        if self.reads_features and (bad := non_finite_token_statistics(x.draft)):
            return GateDecision(True, math.nan, 1.0, f"non-finite token statistics: {', '.join(bad)}")
        score = self.score(x)
        if not math.isfinite(score):
            return GateDecision(True, score, 1.0, "non-finite score")
        return self.decide_on_score(x, score)

    def decide_on_score(self, x: GateInput, score: float) -> GateDecision:
        """The decision on a finite score: escalate iff it reaches ``threshold``."""
        escalate = score >= self.threshold
        return GateDecision(escalate, score, float(escalate))
