"""Gates that judge the draft's content: RSD (a process reward model), SpecReason (the strong
model as judge), and the oracle (an exact verifier).

A gate that calls a model reports what the call cost in its ``GateDecision.cost`` (2·N FLOPs per
scored token, the paper's convention), under the judging model's tier; the gate node adds it to
the run's ``costs``, so the run's totals include the judging like any other model call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from stepgraph.routing.gates.base import Gate, GateDecision, GateInput


class StepScorer(Protocol):
    """Log-probabilities a model assigns to a candidate step (``TransformersStepModel.step_logprobs``)."""

    n_params: int

    def step_logprobs(self, question: str, steps: list[str], step: str) -> list[float]: ...


class _BelowThresholdGate(Gate):
    """Escalate iff an acceptance score in [0, 1] is below ``accept_threshold``."""

    def __init__(self, accept_threshold: float) -> None:
        self.accept_threshold = accept_threshold
        self.threshold = 0.0

    def acceptance(self, x: GateInput) -> float:
        raise NotImplementedError

    def score(self, x: GateInput) -> float:
        return self.accept_threshold - self.acceptance(x)

    def decide_on_score(self, x: GateInput, score: float) -> GateDecision:
        return GateDecision(score > 0, score, float(score > 0))


class ProcessRewardGate(_BelowThresholdGate):
    """RSD: a process reward model scores each draft step; regenerate if below the threshold.

    Args:
        reward: any scorer GateInput → reward in [0, 1] (a served PRM such as Skywork-PRM, or the
            testbed's trained ``training.prm.StepRewardModel``).
        threshold: rewards below it escalate.
    """

    name = "rsd"

    def __init__(self, reward: Callable[[GateInput], float], threshold: float = 0.5) -> None:
        super().__init__(threshold)
        self.reward = reward

    def acceptance(self, x: GateInput) -> float:
        return float(self.reward(x))


class JudgeGate(_BelowThresholdGate):
    """SpecReason: the strong model judges the draft step; regenerate if it finds it unlikely.

    On the testbed the verdict score is the strong model's probability of the draft's least
    likely token given the same prefix (its likelihood of the step, read where it is weakest),
    instead of a prompted yes/no judgement.

    Each judging pass is one call of the judge, costing 2·N FLOPs per scored token; it is
    reported in the decision's ``cost`` under ``judge_tier``.

    Args:
        judge: the strong model, with ``step_logprobs``.
        threshold: acceptance scores below it escalate.
        judge_tier: the judge's tier in the graph (default: the tier above the draft's, which is
            where the strong model sits when it also regenerates escalated steps).
    """

    name = "specreason"

    def __init__(self, judge: StepScorer, threshold: float = 0.5, judge_tier: int | None = None) -> None:
        super().__init__(threshold)
        self.judge = judge
        self.judge_tier = judge_tier

    def _judge(self, x: GateInput) -> list[float] | None:
        try:
            return self.judge.step_logprobs(x.question, list(x.steps), x.draft.text)
        except ValueError:
            return None  # a step the judge cannot even tokenize in place

    def acceptance(self, x: GateInput) -> float:
        logprobs = self._judge(x)
        return math.exp(min(logprobs)) if logprobs else 0.0  # an unscorable step is not accepted

    def decide(self, x: GateInput) -> GateDecision:
        # One judging call per decision: the score and the cost come from the same log-probabilities.
        logprobs = self._judge(x)
        score = self.accept_threshold - (math.exp(min(logprobs)) if logprobs else 0.0)
        tier = x.tier + 1 if self.judge_tier is None else self.judge_tier
        cost = {str(tier): {"calls": 1.0, "flops": 2.0 * self.judge.n_params * len(logprobs or [])}}
        if not math.isfinite(score):  # a judge returning NaN log-probabilities: the safe side
            return GateDecision(True, score, 1.0, "non-finite score", cost)
        return GateDecision(score > 0, score, float(score > 0), cost=cost)


class OracleGate(Gate):
    """Escalate exactly the drafts the exact verifier rejects: the cost floor of draft-then-regenerate.

    Args:
        verify: (question, prior steps, step) → True / False / None (None escalates).
    """

    name = "oracle"
    threshold = 0.5
    reads_features = False

    def __init__(self, verify: Callable[[str, list[str], str], bool | None]) -> None:
        self.verify = verify

    def score(self, x: GateInput) -> float:
        return 0.0 if self.verify(x.question, list(x.steps), x.draft.text) is True else 1.0
