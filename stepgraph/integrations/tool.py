"""The routed graph as a LangChain tool an agent can call."""

from __future__ import annotations

from typing import Any

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from stepgraph.context import RouterContext


class RoutedQuestion(BaseModel):
    """Input of the stepwise reasoning tool."""

    question: str = Field(description="A self-contained math word problem to solve step by step.")
    max_steps: int = Field(default=16, ge=1, le=64, description="Step limit of the answer.")


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    totals = result["totals"]
    return {
        "answer": result["answer"],
        "steps": [f"[tier {s['tier']}] {s['text']}" for s in result["steps"]],
        "stop_reason": result["stop_reason"],
        "escalations": result["escalations"],
        "flops": totals["flops"],
        "usd": totals["usd"],
    }


def routed_reasoning_tool(graph: Any = None, *, name: str = "stepwise_reasoner", seed: int | None = 0) -> StructuredTool:
    """A ``StructuredTool`` that answers a question with the routed graph and reports the cost.

    Args:
        graph: a compiled stepgraph graph (default: the shipped pair with its default gate).
        name: the tool's name as the agent sees it.
        seed: base seed of each run.

    Example:
        >>> tool = routed_reasoning_tool()
        >>> tool.invoke({"question": "Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?"})["answer"]
        '9'
    """
    if graph is None:
        from stepgraph.integrations.studio import default_graph

        graph = default_graph()

    def solve(question: str, max_steps: int = 16) -> dict[str, Any]:
        return _summary(graph.invoke({"question": question}, context=RouterContext(seed=seed, max_steps=max_steps)))

    async def asolve(question: str, max_steps: int = 16) -> dict[str, Any]:
        result = await graph.ainvoke({"question": question}, context=RouterContext(seed=seed, max_steps=max_steps))
        return _summary(result)

    return StructuredTool.from_function(
        func=solve,
        coroutine=asolve,
        name=name,
        description="Solve a math word problem step by step; a small model drafts each step and a large model "
        "rewrites the steps it is unsure of. Returns the answer, the steps and the compute cost.",
        args_schema=RoutedQuestion,
    )
