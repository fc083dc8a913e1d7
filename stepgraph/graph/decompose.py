"""The decomposer mode (R2-Reasoner's decomposer): plan sub-questions first, then answer them step by step.

With ``build_graph(..., decomposer=Decomposer())`` a ``plan`` node runs once per question,
after ``start``: it asks one tier's model (by default the strongest) for a numbered list of
sub-questions, and every later step is asked for with the question *and* that plan
(``task_prompt``), one sub-question per step, the last step ending in ``\\boxed{}``. The steps are
still routed as usual — drafted, gated, escalated, and allocated when the graph has an
allocator — and the planner's call is charged to its tier. The output gains ``plan``.

A planner must follow an instruction to write a numbered list: an instruction-tuned model such as
Qwen2.5-7B-Instruct or GPT-4.1-mini (through ``stepgraph.models.chat``). The shipped testbed
models were trained only to write solution steps and cannot plan. When the planner's answer holds
no numbered item the graph falls back to the plain question (``plan`` is empty): decomposition is
an aid, never a reason to fail a question.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stepgraph.context import RouterContext
from stepgraph.graph.nodes import call_seed
from stepgraph.models.base import StepModel, StepOutput, agenerate
from stepgraph.models.costs import Prices, call_cost

PLAN_INSTRUCTION = (
    "Break the following problem into a short numbered list of sub-questions (at most {max_items}), one per line with no blank lines, "
    "in the order they must be solved; the last one asks for the final answer. Do not answer them.\n\nProblem: {question}"
)
TASK_TEMPLATE = (
    "{question}\n\nSub-questions:\n{items}\n\nAnswer the sub-questions in order, one step each. "
    "End the last step with the final answer in \\boxed{{}}."
)
_ITEM = re.compile(r"^\s*(\d{1,3})\s*[.)]\s+(\S.*?)\s*$")


def parse_plan(text: str, max_items: int) -> list[str]:
    """The numbered items of a planner's answer (``1. ...`` or ``1) ...``), in order, at most ``max_items``."""
    return [m.group(2) for line in text.splitlines() if (m := _ITEM.match(line))][:max_items]


def task_prompt(question: str, plan: Sequence[str]) -> str:
    """The prompt every step is written for: the question, its numbered plan and the answer format."""
    return TASK_TEMPLATE.format(question=question, items="\n".join(f"{i}. {item}" for i, item in enumerate(plan, 1)))


@dataclass(frozen=True)
class Decomposer:
    """How the ``plan`` node asks for sub-questions.

    Attributes:
        tier: the tier whose model plans (negative counts from the strongest; default -1).
        max_items: the most sub-questions kept.
        max_tokens: the planner's token limit.
        instruction: the planning prompt, with ``{question}`` and ``{max_items}`` fields.
    """

    tier: int = -1
    max_items: int = 8
    max_tokens: int = 256
    instruction: str = PLAN_INSTRUCTION

    def __post_init__(self) -> None:
        if not 1 <= self.max_items <= 64:
            raise ValueError(f"Decomposer.max_items must be in [1, 64], got {self.max_items}.")
        if self.max_tokens < 1:
            raise ValueError(f"Decomposer.max_tokens must be >= 1, got {self.max_tokens}.")


class PlanNode:
    """The graph's ``plan`` node: one planner call per question, its cost charged to the planner's tier."""

    def __init__(self, decomposer: Decomposer, tiers: Sequence[StepModel], prices: Sequence[Prices] | None = None) -> None:
        if not -len(tiers) <= decomposer.tier < len(tiers):
            raise ValueError(f"Decomposer.tier {decomposer.tier} is not a tier of this graph (it has {len(tiers)}).")
        self.decomposer = decomposer
        self.tier = decomposer.tier % len(tiers)
        self.model = tiers[self.tier]
        self.prices = prices[self.tier] if prices is not None else Prices()

    def _request(self, state: Mapping[str, Any], runtime: Any) -> tuple[str, dict[str, Any]]:
        context = getattr(runtime, "context", None) or RouterContext()
        prompt = self.decomposer.instruction.format(question=state["question"], max_items=self.decomposer.max_items)
        return prompt, {"temperature": context.temperature, "seed": call_seed(context.seed, -1, self.tier),
                        "max_tokens": self.decomposer.max_tokens}

    def plan(self, state: Mapping[str, Any], runtime: Any = None) -> dict[str, Any]:
        """Ask the planner for sub-questions (the node's sync body)."""
        prompt, settings = self._request(state, runtime)
        return self._planned(state["question"], self.model.generate_step(prompt, [], **settings))

    async def aplan(self, state: Mapping[str, Any], runtime: Any = None) -> dict[str, Any]:
        """``plan``, awaiting the planner."""
        prompt, settings = self._request(state, runtime)
        return self._planned(state["question"], await agenerate(self.model, prompt, [], **settings))

    def _planned(self, question: str, out: StepOutput) -> dict[str, Any]:
        plan = parse_plan(out.text, self.decomposer.max_items)
        return {
            "plan": plan,
            "task_prompt": task_prompt(question, plan) if plan else None,
            "costs": {str(self.tier): call_cost(out, self.model.n_params, self.prices)},
        }
