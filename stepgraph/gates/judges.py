"""Gates that judge the draft's content: RSD (a process reward model), SpecReason (the strong
model as judge), and the oracle (an exact verifier).

Their judging calls are not model calls of the graph, so the graph's costs do not include them;
a gate that calls a model keeps its own count in ``judge_flops`` (2·N per scored token, the
paper's convention), which the benchmark adds to each run's FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from stepgraph.gates.base import Gate, GateDecision, GateInput


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

    Args:
        judge: the strong model, with ``step_logprobs``.
        threshold: acceptance scores below it escalate.
    """

    name = "specreason"

    def __init__(self, judge: StepScorer, threshold: float = 0.5) -> None:
        super().__init__(threshold)
        self.judge = judge
        self.judge_flops = 0.0

    def acceptance(self, x: GateInput) -> float:
        try:
            logprobs = self.judge.step_logprobs(x.question, list(x.steps), x.draft.text)
        except ValueError:
            return 0.0  # a step the judge cannot even tokenize in place is not accepted
        self.judge_flops += 2.0 * self.judge.n_params * len(logprobs)
        return math.exp(min(logprobs)) if logprobs else 0.0


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
