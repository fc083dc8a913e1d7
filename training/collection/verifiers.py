"""Step verifiers: the per-step verdict V that offline training needs.

On the testbed the verdict is exact (``TestbedVerifier``). On real data: ``RolloutVerifier``
(the strongest tier completes the solution from the step k times; needs only reference answers)
or ``JudgeVerifier`` (an LLM judge with the paper's stepwise prompt), or any object with the
same ``verify`` method.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, Protocol

from langchain_core.language_models import BaseChatModel

from stepgraph.answers import extract_boxed, is_correct
from stepgraph.errors import ConfigError
from stepgraph.graph.nodes import call_seed
from stepgraph.models.base import DEFAULT_TEMPERATURE, StepModel
from stepgraph.testbed import testbed_task


class StepVerifier(Protocol):
    """Judges whether ``step`` correctly continues ``prior_steps`` for ``question``."""

    def verify(self, question: str, reference: str, prior_steps: Sequence[str], step: str) -> bool | None:
        """True / False, or None when no verdict can be given."""
        ...


class TestbedVerifier:
    """The testbed's exact step verifier (``verify_step`` of the shipped tiers' task, ``testbed_task()``), keyed by question text."""

    __test__ = False  # not a pytest class

    def __init__(self, problems: Sequence[Any]) -> None:
        self._problems = {p.question: p for p in problems}
        self._verify_step = testbed_task().verify_step

    def verify(self, question: str, reference: str, prior_steps: Sequence[str], step: str) -> bool | None:
        problem = self._problems.get(question)
        return None if problem is None else self._verify_step(problem, list(prior_steps), step)


JUDGE_PROMPT = (
    "Determine whether the final step is correct for the given problem.\n"
    "Reply with exactly one verdict, correct or incorrect, and do not explain.\n\n"
    "Problem:\n{question}\n\nPrevious steps:\n{prior}\n\nFinal step:\n{step}\n\nVerdict (correct | incorrect):"
)
"""The paper's stepwise verification prompt (GPT-4o-mini as the judge there)."""

VERDICT = re.compile(r"\b(incorrect|correct)\b", re.IGNORECASE)


def parse_verdict(reply: str) -> bool | None:
    """The judge's first verdict word: True for correct, False for incorrect, None for neither."""
    match = VERDICT.search(reply)
    return None if match is None else match.group(1).lower() == "correct"


class JudgeVerifier:
    """An LLM judge with the paper's stepwise prompt: is the final step correct for the problem?

    Args:
        model: any ``BaseChatModel`` (e.g. ``ChatOpenAI(model="gpt-4o-mini", temperature=0)``).
        prompt: the judge prompt, with ``{question}``, ``{prior}`` and ``{step}`` fields.
    """

    def __init__(self, model: BaseChatModel, prompt: str = JUDGE_PROMPT) -> None:
        self.model, self.prompt = model, prompt

    def verify(self, question: str, reference: str, prior_steps: Sequence[str], step: str) -> bool | None:
        prior = "\n\n".join(prior_steps) or "(none)"
        reply = self.model.invoke(self.prompt.format(question=question, prior=prior, step=step))
        return parse_verdict(str(reply.content))


class RolloutVerifier:
    """A step is correct when at least ``m`` of ``k`` completions from (prefix + step) reach the reference.

    The Math-Shepherd estimate: model-agnostic, it needs only reference answers. The completing
    model is any StepModel (the strongest tier); completions stop at a ``\\boxed{}`` answer, the
    model's end of answer, or ``max_steps``, and are judged with math-verify. A step that itself
    holds the final answer is judged directly. Seeds derive from ``seed``, the prefix and the
    rollout index, so verdicts are reproducible.

    Args:
        model: the completing model.
        k: completions per step.
        m: completions that must reach the reference.
        max_steps: step limit of a completion (beyond the prefix).
        temperature: sampling temperature of the completions.
        max_step_tokens: token limit per completion step.
        seed: base seed.
    """

    def __init__(self, model: StepModel, *, k: int = 4, m: int = 1, max_steps: int = 16, temperature: float = DEFAULT_TEMPERATURE,
                 max_step_tokens: int = 64, seed: int = 0) -> None:
        if not 1 <= m <= k:
            raise ConfigError(f"RolloutVerifier needs 1 ≤ m ≤ k, got k={k}, m={m}.")
        self.model, self.k, self.m, self.max_steps = model, k, m, max_steps
        self.temperature, self.max_step_tokens, self.seed = temperature, max_step_tokens, seed

    def verify(self, question: str, reference: str, prior_steps: Sequence[str], step: str) -> bool | None:
        if extract_boxed(step) is not None:
            return is_correct(extract_boxed(step), reference)
        reached = 0
        for rollout in range(self.k):
            reached += self.complete(question, reference, [*prior_steps, step], rollout)
            if reached >= self.m:
                return True
            if reached + (self.k - rollout - 1) < self.m:
                return False
        return False

    def complete(self, question: str, reference: str, steps: list[str], rollout: int) -> bool:
        """One completion of ``steps``; whether its final answer equals the reference."""
        steps = list(steps)
        base = int.from_bytes(hashlib.sha256(f"{self.seed}:{rollout}:{question}:{len(steps)}:{steps[-1]}".encode()).digest()[:4], "big")
        for index in range(self.max_steps):
            out = self.model.generate_step(question, steps, temperature=self.temperature, seed=call_seed(base, index, 0),
                                           max_tokens=self.max_step_tokens)
            steps.append(out.text)
            answer = extract_boxed(out.text)
            if answer is not None or out.finished:
                return is_correct(answer, reference)
        return False
