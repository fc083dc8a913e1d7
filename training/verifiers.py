"""Step verifiers: the per-step verdict V that offline training needs.

On the testbed the verdict is exact (``TestbedVerifier``). On real data, plug in any object with
the same ``verify`` method, e.g. ``JudgeVerifier`` around a LangChain chat model that judges
each step (an LLM judge, as in SpecReason), or a process reward model thresholded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from langchain_core.language_models import BaseChatModel

from stepgraph.testbed import task


class StepVerifier(Protocol):
    """Judges whether ``step`` correctly continues ``prior_steps`` for ``question``."""

    def verify(self, question: str, reference: str, prior_steps: Sequence[str], step: str) -> bool | None:
        """True / False, or None when no verdict can be given."""
        ...


class TestbedVerifier:
    """The testbed's exact step verifier (``task.verify_step``), keyed by question text."""

    __test__ = False  # not a pytest class

    def __init__(self, problems: Sequence[task.Problem]) -> None:
        self._problems = {p.question: p for p in problems}

    def verify(self, question: str, reference: str, prior_steps: Sequence[str], step: str) -> bool | None:
        problem = self._problems.get(question)
        return None if problem is None else task.verify_step(problem, list(prior_steps), step)


JUDGE_PROMPT = (
    "You check one step of a step-by-step solution.\n\nProblem: {question}\n\nPrevious steps:\n{prior}\n\n"
    "Next step:\n{step}\n\nIs the next step correct given the previous steps? Answer with one word: yes or no."
)


class JudgeVerifier:
    """An LLM judge: asks a LangChain chat model whether each step is correct.

    Args:
        model: any ``BaseChatModel`` (e.g. ``ChatOpenAI(model="gpt-4.1-mini")``).
        prompt: the judge prompt, with ``{question}``, ``{prior}`` and ``{step}`` fields.
    """

    def __init__(self, model: BaseChatModel, prompt: str = JUDGE_PROMPT) -> None:
        self.model, self.prompt = model, prompt

    def verify(self, question: str, reference: str, prior_steps: Sequence[str], step: str) -> bool | None:
        prior = "\n\n".join(prior_steps) or "(none)"
        reply = self.model.invoke(self.prompt.format(question=question, prior=prior, step=step))
        word = re.search(r"\b(yes|no)\b", str(reply.content).lower())
        return None if word is None else word.group(1) == "yes"
