"""The routed graph as a LangChain tool an agent can call.

A question the models cannot take (empty, too long) or a model failure does not end the agent's
run: the tool raises ``ToolException`` with ``handle_tool_error=True``, so LangChain turns it
into a ``ToolMessage`` with ``status="error"`` and the message, and the agent can try again.
"""

from __future__ import annotations

from typing import Any

from langchain_core.tools import StructuredTool, ToolException
from pydantic import BaseModel, Field

from stepgraph.context import RouterContext
from stepgraph.errors import BadQuestionError, ModelOutputError
from stepgraph.integrations.settings import context_default

# RouterContext's defaults (the one source): a default changed there changes the tool's.
DEFAULT_MAX_STEPS: int = context_default("max_steps")
DEFAULT_SEED: int | None = context_default("seed")


class RoutedQuestion(BaseModel):
    """Input of the stepwise reasoning tool."""

    question: str = Field(description="A self-contained math word problem to solve step by step.")
    max_steps: int = Field(default=DEFAULT_MAX_STEPS, ge=1, le=64, description="Step limit of the answer.")


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    totals = result["totals"]
    summary = {
        "answer": result["answer"],
        "steps": [f"[tier {s['tier']}] {s['text']}" for s in result["steps"]],
        "stop_reason": result["stop_reason"],
        "escalations": result["escalations"],
        "in_domain": result.get("in_domain"),
        "flops": totals["flops"],
        "usd": totals["usd"],
    }
    if result["answer"] is None:  # say so in words: an agent should not read a number into the steps
        summary["note"] = f"No final answer (stop reason: {result['stop_reason']}); rephrase or split the question."
    if result.get("in_domain") is False:  # an agent should not trust it as it would an in-domain answer
        warning = "The question is outside the models' domain (in_domain false): the answer may be wrong; check it another way."
        summary["note"] = f"{summary.get('note', '')} {warning}".strip()
    return summary


def _tool_error(exc: BadQuestionError | ModelOutputError) -> ToolException:
    kind = "The question cannot be answered as given" if isinstance(exc, BadQuestionError) else "The models failed"
    return ToolException(f"{kind}: {exc}")


def routed_reasoning_tool(graph: Any = None, *, name: str = "stepwise_reasoner",
                          seed: int | None = DEFAULT_SEED) -> StructuredTool:
    """A ``StructuredTool`` that answers a question with the routed graph and reports the cost.

    Args:
        graph: a compiled stepgraph graph (default: the shipped tiers with their default gate).
        name: the tool's name as the agent sees it.
        seed: base seed of each run (default: RouterContext's).

    Example:
        >>> tool = routed_reasoning_tool()
        >>> tool.invoke({"question": "Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?"})["answer"]
        '9'
    """
    if graph is None:
        from stepgraph.integrations.studio import default_graph

        graph = default_graph()

    def solve(question: str, max_steps: int = DEFAULT_MAX_STEPS) -> dict[str, Any]:
        try:
            return _summary(graph.invoke({"question": question}, context=RouterContext(seed=seed, max_steps=max_steps)))
        except (BadQuestionError, ModelOutputError) as exc:
            raise _tool_error(exc) from exc

    async def asolve(question: str, max_steps: int = DEFAULT_MAX_STEPS) -> dict[str, Any]:
        try:
            result = await graph.ainvoke({"question": question}, context=RouterContext(seed=seed, max_steps=max_steps))
        except (BadQuestionError, ModelOutputError) as exc:
            raise _tool_error(exc) from exc
        return _summary(result)

    return StructuredTool.from_function(
        func=solve,
        coroutine=asolve,
        name=name,
        description="Solve a math word problem step by step; a small model drafts each step and a large model "
        "rewrites the steps it is unsure of. Returns the answer, the steps and the compute cost.",
        args_schema=RoutedQuestion,
        handle_tool_error=True,  # the agent gets the message as an error ToolMessage and goes on
    )
