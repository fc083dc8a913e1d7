"""The graph's state: what flows between the draft, features, gate, escalate and append nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, NotRequired

from langgraph.channels import DeltaChannel
from pydantic import Field
from typing_extensions import TypedDict

from stepgraph.models.costs import add_costs

# Appended steps between full snapshots of the step list in a checkpoint: rarer snapshots keep the
# checkpoints small, more frequent ones shorten the replay of writes when a thread is loaded.
STEPS_SNAPSHOT_FREQUENCY = 1000


class Step(TypedDict):
    """One step of the answer, as appended.

    Attributes:
        index: position in the answer.
        text: the step that was kept.
        tier: the tier whose model wrote it (0 = draft model).
        model: that model's name.
        escalated: whether the gate sent it to a higher tier.
        draft: the text of the first draft of this step (also when replaced).
        observation: the features the gate saw on the first draft.
        gate_score: the gate's score on the first draft (None where no gate was asked).
        mu_escalate: the gate's μ(escalate | o) on the first draft (None where no gate was asked).
        gate_reason: why the gate escalated without comparing a score (e.g. "non-finite score");
            None for an ordinary decision.
        truncated: the model hit its token limit without a step break.
        attempts: every generation of this step, in order: {tier, model, text, cost}.
        flops_so_far: total FLOPs of the answer after this step.
    """

    index: int
    text: str
    tier: int
    model: str
    escalated: bool
    draft: str
    observation: dict[str, float | None]
    gate_score: float | None
    mu_escalate: float | None
    gate_reason: str | None
    truncated: bool
    attempts: list[dict[str, Any]]
    flops_so_far: float


class InputState(TypedDict):
    """What a run takes: a new question starts a fresh answer on the thread.

    Attributes:
        question: the math word problem to solve, as plain text.
    """

    question: Annotated[str, Field(description="The math word problem to solve, as plain text; a new question on a thread starts a fresh answer.")]


class OutputState(TypedDict):
    """What a run returns: the answer and every number it reports."""

    question: str
    steps: list[Step]
    answer: str | None
    stop_reason: str | None  # final_answer, max_steps, budget or context_limit (the next prompt does not fit)
    costs: dict[str, dict[str, float]]
    totals: dict[str, float]
    escalations: int
    in_domain: bool | None  # the out-of-domain signal (stepgraph.domain): None when unknown or off


class PlannedOutputState(OutputState):
    """What a decomposing graph returns: the output plus the planner's sub-questions."""

    plan: list[str]


def append_steps(steps: list[Step], appended: Sequence[list[Step]]) -> list[Step]:
    """Reducer of ``steps``: the steps so far, then each batch of appended steps in order."""
    return [*steps, *(step for batch in appended for step in batch)]


class RouterState(TypedDict):
    """The full state. ``steps`` and ``costs`` have reducers; the rest is overwritten.

    ``steps`` is a ``DeltaChannel``: a checkpoint stores only the steps appended since the last
    one (and a full snapshot every few hundred steps), not the whole list at every super-step, so
    a thread's checkpoints grow linearly with the answer's length instead of quadratically.
    """

    question: str
    steps: Annotated[list[Step], DeltaChannel(append_steps, snapshot_frequency=STEPS_SNAPSHOT_FREQUENCY)]
    costs: Annotated[dict[str, dict[str, float]], add_costs]
    # The step being decided: its current candidate and every generation so far.
    candidate: NotRequired[dict[str, Any] | None]
    candidate_tier: NotRequired[int]
    attempts: NotRequired[list[dict[str, Any]]]
    observation: NotRequired[dict[str, float | None]]
    first_observation: NotRequired[dict[str, float | None]]
    decision: NotRequired[dict[str, Any] | None]
    first_decision: NotRequired[dict[str, Any] | None]
    # Across steps.
    base_tier: NotRequired[int]
    escalations: NotRequired[int]
    escalation_run: NotRequired[int]  # escalated steps in a row (RouterContext.stick_after)
    in_domain: NotRequired[bool | None]  # whether the question is like the gate's calibration questions (None: unknown)
    answer: NotRequired[str | None]
    stop_reason: NotRequired[str | None]
    totals: NotRequired[dict[str, float]]
    # Set only in graphs built with an allocator or a decomposer (``build_graph``'s opt-in arguments).
    allocated_tier: NotRequired[int | None]
    allocation: NotRequired[dict[str, Any] | None]
    plan: NotRequired[list[str]]
    task_prompt: NotRequired[str | None]
