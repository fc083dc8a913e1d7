"""The training data records: an ``Item`` to collect on; the traces replayed offline, one ``Episode`` per problem, one ``StepRecord`` per step."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Item:
    """A problem to collect on: an id, the question and its reference answer."""

    problem_id: str
    question: str
    reference: str


@dataclass
class StepRecord:
    """One step of a routed answer, as the behaviour gate played it.

    Attributes:
        index: position of the step in the answer (0-based).
        observation: the draft's features o_t, keyed by the feature schema's names.
        action: 1 if the behaviour gate escalated the step, else 0.
        mu_escalate: μ(escalate | o_t) of the behaviour gate (not of the action taken).
        draft: the drafted step's text.
        escalated: the step the next tier wrote from the same prefix. Collection runs it for
            every step (also when the draft was accepted) so that both verdicts are known; it
            enters the trajectory only when ``action`` is 1.
        draft_correct: exact (or judge) verdict V on the draft given the steps before it.
        escalated_correct: verdict on ``escalated``; None where it was not run.
        draft_flops: FLOPs of the draft call (2·N·generated tokens).
        escalate_flops: FLOPs of the escalation call; None where it was not run.
        cost: FLOPs this step cost the routed system: the draft, plus the escalation if taken.
        draft_output: the draft's ``StepOutput.to_dict()`` (tokens and their log-probabilities),
            so that features of a later schema can be recomputed from the trace; None in traces
            collected before it was kept.
        tiers: with more than two tiers (``collect(..., record_tiers=True)``), what every tier
            writes from the same prefix, cheapest first: ``{"tier", "model", "text", "correct",
            "flops", "observation"}`` each (``training.tier_traces``); None in 2-tier traces.
    """

    index: int
    observation: dict[str, float | None]
    action: int
    mu_escalate: float
    draft: str
    escalated: str | None
    draft_correct: bool | None
    escalated_correct: bool | None
    draft_flops: float
    escalate_flops: float | None
    cost: float
    draft_output: dict[str, Any] | None = None
    tiers: list[dict[str, Any]] | None = None


@dataclass
class Episode:
    """One problem answered by the routed graph under the behaviour gate.

    Attributes:
        problem_id: stable id of the problem (unique within a store).
        question: the question text.
        reference: the reference final answer.
        steps: the step records in order.
        reward: R, 1 if the routed answer is correct.
        target_reward: R_M, 1 if the strongest tier alone answered correctly.
        target_flops: FLOPs of that strongest-tier-alone run.
        behaviour: name of the behaviour gate.
        seed: sampling seed of the run.
    """

    problem_id: str
    question: str
    reference: str
    steps: list[StepRecord]
    reward: int
    target_reward: int
    target_flops: float
    behaviour: str = ""
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The stored form; μ(escalate | o) keeps the trace store's field name ``behaviour_prob``."""
        data = asdict(self)
        for step in data["steps"]:
            step[STORED_MU_ESCALATE] = step.pop("mu_escalate")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Episode:
        data = dict(data)
        data["steps"] = [StepRecord(**_from_stored_step(s)) for s in data["steps"]]
        return cls(**data)


STORED_MU_ESCALATE = "behaviour_prob"
"""The name under which stored traces keep StepRecord.mu_escalate (unchanged, so old stores load)."""


def _from_stored_step(step: dict[str, Any]) -> dict[str, Any]:
    step = dict(step)
    if STORED_MU_ESCALATE in step:
        step["mu_escalate"] = step.pop(STORED_MU_ESCALATE)
    return step
