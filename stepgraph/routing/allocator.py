"""The ex-ante allocator (R2-Reasoner's subtask allocator): pick the tier of the next step before any draft.

A post-hoc gate judges a draft that has already been paid for; an allocator decides from what
is known *before* the step is written — the question and the accepted prefix — so a step it
sends up costs no draft call. With ``build_graph(..., allocator=...)`` an ``allocate`` node runs
before every ``draft``: the step is drafted at the allocated tier, and the graph's gate still
checks that draft as usual (``AlwaysDraftGate`` for "allocator alone"). Without an allocator the
graph is unchanged.

The allocator's observation (``ALLOCATOR_SCHEMA``) uses only what exists before the step:

* ``question_chars``, ``question_numbers``, ``question_max_digits``: the question's length, how
  many numbers it holds and the digits of the largest;
* ``step_index``, ``tier``: the step's position and the lowest tier it may use (``base_tier``);
* ``sent_up``: earlier steps not written by tier 0; ``previous_sent_up``: whether the last one was;
* ``previous_*``: the previous step's *draft* features (confidence, length); None where the
  previous step had no tier-0 draft (the first step, or one the allocator sent up), which a
  learned allocator imputes with its training mean.

The decision for K tiers from the probabilities p_k that tier k is the cheapest whose step the
verifier accepts: the lowest tier k ≥ base whose log-odds of P(cheapest > k) is below κ (κ on
the log-odds scale, as the policy's). With two tiers: send the step to the target iff the
log-odds that the draft is rejected is ≥ κ.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stepgraph.features import FeatureSchema, Observation

ALLOCATOR_SCHEMA = FeatureSchema(
    "stepgraph.allocator",
    1,
    [
        "question_chars",
        "question_numbers",
        "question_max_digits",
        "step_index",
        "tier",
        "sent_up",
        "previous_sent_up",
        "previous_api_confidence",
        "previous_logit_confidence",
        "previous_step_tokens",
    ],
)

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class PriorStep:
    """What the allocator may know about an accepted step.

    Attributes:
        tier: the tier that wrote the kept step.
        draft_observation: the features of the step's tier-0 draft; None where no tier-0 draft was written.
    """

    tier: int
    draft_observation: Observation | None


def allocator_observation(question: str, prior: Sequence[PriorStep], tier: int = 0) -> Observation:
    """The allocator's observation before step ``len(prior)``, keyed by ALLOCATOR_SCHEMA's names."""
    previous = prior[-1] if prior else None
    draft = previous.draft_observation if previous is not None else None
    numbers = _NUMBER.findall(question)
    return {
        "question_chars": float(len(question)),
        "question_numbers": float(len(numbers)),
        "question_max_digits": float(max((len(n.split(".")[0]) for n in numbers), default=0)),
        "step_index": float(len(prior)),
        "tier": float(tier),
        "sent_up": float(sum(step.tier > 0 for step in prior)),
        "previous_sent_up": None if previous is None else float(previous.tier > 0),
        "previous_api_confidence": None if draft is None else draft.get("api_confidence"),
        "previous_logit_confidence": None if draft is None else draft.get("logit_confidence"),
        "previous_step_tokens": None if draft is None else draft.get("step_tokens"),
    }


def prior_steps(steps: Sequence[Mapping[str, Any]]) -> list[PriorStep]:
    """The graph state's accepted steps as the allocator sees them: a step's observation is its
    draft's only when its first attempt was at tier 0."""
    prior = []
    for step in steps:
        attempts = step.get("attempts") or []
        drafted = bool(attempts) and attempts[0].get("tier") == 0
        prior.append(PriorStep(int(step.get("tier", 0)), dict(step.get("observation") or {}) if drafted else None))
    return prior


@dataclass(frozen=True)
class AllocatorInput:
    """What an allocator may look at before the next step is written.

    Attributes:
        question: the question being answered.
        steps: the steps accepted so far.
        observation: ``allocator_observation`` of the question and prefix.
        tier: the lowest tier the step may use (the graph's ``base_tier``).
        n_tiers: how many tiers the graph has.
    """

    question: str
    steps: tuple[str, ...]
    observation: Observation
    tier: int
    n_tiers: int


@dataclass(frozen=True)
class Allocation:
    """An allocator's choice for one step.

    Attributes:
        tier: the tier that writes the step (≥ the input's tier, < n_tiers).
        score: how likely a tier above the input's is needed (a learned allocator: its log-odds), compared with κ;
            NaN for fixed allocators.
        reason: why the allocator sent the step up without comparing a score (e.g. non-finite input).
    """

    tier: int
    score: float = math.nan
    reason: str | None = None


class Allocator(ABC):
    """Picks the tier of the next step before any draft is written."""

    name: str = "allocator"

    @abstractmethod
    def allocate(self, x: AllocatorInput) -> Allocation:
        """The tier for the step described by ``x``."""


class FixedAllocator(Allocator):
    """Always allocates ``tier`` (clipped to the graph's tiers): a baseline, and a test double."""

    name = "fixed"

    def __init__(self, tier: int) -> None:
        if tier < 0:
            raise ValueError(f"FixedAllocator tier must be >= 0, got {tier}.")
        self.tier = tier

    def allocate(self, x: AllocatorInput) -> Allocation:
        return Allocation(min(max(self.tier, x.tier), x.n_tiers - 1))


def tier_from_scores(scores: Sequence[float], kappa: float, base: int = 0) -> tuple[int, float]:
    """The lowest tier k ≥ ``base`` whose score of "a tier above k is needed" (``scores[k]``, rising with
    P(cheapest accepted tier > k)) is below κ, and ``scores[base]``. A NaN score sends the step to the
    strongest tier (the safe side)."""
    top = len(scores) - 1
    if any(math.isnan(s) for s in scores):
        return top, math.nan
    for k in range(base, top):
        if scores[k] < kappa:
            return k, scores[base]
    return top, scores[base]


def tier_from_probabilities(probabilities: Sequence[float], kappa: float, base: int = 0) -> tuple[int, float]:
    """``tier_from_scores`` on P(cheapest > k) with a probability κ: the scale training's replays search κ on."""
    if not all(math.isfinite(p) for p in probabilities):
        return len(probabilities) - 1, math.nan
    return tier_from_scores([sum(probabilities[k + 1 :]) for k in range(len(probabilities))], kappa, base)


class AllocateNode:
    """The graph's ``allocate`` node: ask the allocator for the next step's tier before ``draft``.

    Writes ``allocated_tier`` (read by ``draft``, never below ``base_tier``) and ``allocation``
    (the decision, for tracing). ``allocate`` is a plain ``state -> update`` function bound to the allocator.
    """

    def __init__(self, allocator: Allocator, n_tiers: int) -> None:
        self.allocator, self.n_tiers = allocator, n_tiers

    def allocate(self, state: Mapping[str, Any], runtime: Any = None) -> dict[str, Any]:
        """Choose the tier of the next step."""
        base = int(state.get("base_tier", 0))
        steps = state.get("steps", [])
        x = AllocatorInput(
            question=state["question"],
            steps=tuple(s["text"] for s in steps),
            observation=allocator_observation(state["question"], prior_steps(steps), base),
            tier=base,
            n_tiers=self.n_tiers,
        )
        decision = self.allocator.allocate(x)
        tier = min(max(decision.tier, base), self.n_tiers - 1)
        return {"allocated_tier": tier,
                "allocation": {"tier": tier, "score": decision.score, "reason": decision.reason, "allocator": self.allocator.name}}
