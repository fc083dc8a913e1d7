"""Build the stepwise routing graph.

    START → draft → features → gate ─┬─(accept)────────→ append ─┬─(more)→ draft
                                     └─(escalate)→ escalate ─┘   └─(done)→ END

With more than two tiers, ``escalate`` goes back to ``features`` so the gate is asked again
on the escalated draft, until the strongest tier writes the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from stepgraph.context import RouterContext
from stepgraph.costs import Prices
from stepgraph.gates.base import Gate
from stepgraph.models.base import StepModel
from stepgraph.nodes import RoutingNodes
from stepgraph.state import InputState, OutputState, RouterState

# Each step takes at most 3 + 2·(tiers − 1) super-steps; the limit only guards against bugs,
# the run's own stop rules (final answer, max_steps, budget) end it first.
RECURSION_LIMIT = 10_000


class RoutingGraph(CompiledStateGraph[RouterState, RouterContext, InputState, OutputState]):
    """The compiled routing graph: a ``CompiledStateGraph`` whose batch methods keep its recursion limit.

    LangChain's ``batch`` fills every input's config with the default limit (25 super-steps)
    before the graph sees it, and that overrides the limit bound with ``with_config``: a batch of
    long answers would stop with ``GraphRecursionError``. A limit the caller sets still wins.
    """

    def _with_limit(self, config: RunnableConfig | Sequence[RunnableConfig] | None) -> Any:
        limit = {"recursion_limit": self.config["recursion_limit"]} if self.config and "recursion_limit" in self.config else {}
        if isinstance(config, Sequence):
            return [limit | dict(c or {}) for c in config]
        return limit | dict(config or {})

    def batch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> Any:
        return super().batch(inputs, self._with_limit(config), **kwargs)

    async def abatch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> Any:
        return await super().abatch(inputs, self._with_limit(config), **kwargs)

    def batch_as_completed(self, inputs: Sequence[Any], config: Any = None, **kwargs: Any) -> Any:
        return super().batch_as_completed(inputs, self._with_limit(config), **kwargs)

    def abatch_as_completed(self, inputs: Sequence[Any], config: Any = None, **kwargs: Any) -> Any:
        return super().abatch_as_completed(inputs, self._with_limit(config), **kwargs)


def build_graph(
    tiers: Sequence[StepModel],
    gate: Gate | Mapping[str, Gate],
    *,
    prices: Sequence[Prices] | None = None,
    checkpointer: Checkpointer = None,
    name: str = "stepgraph",
) -> CompiledStateGraph[RouterState, RouterContext, InputState, OutputState]:
    """Compile the routing graph over ``tiers`` (cheapest first) with one or more gates.

    Args:
        tiers: the models, tier 0 drafting; K ≥ 2.
        gate: a gate, or gates by name (the first is the default; ``RouterContext.gate`` picks).
        prices: API prices per tier, for the dollar cost.
        checkpointer: a LangGraph checkpointer, to resume interrupted runs.
        name: the compiled graph's name.

    Example:
        >>> from stepgraph.gates import AlwaysDraftGate
        >>> from stepgraph.testbed import load_pair
        >>> graph = build_graph(load_pair(), AlwaysDraftGate())
        >>> result = graph.invoke({"question": "Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?"})
        >>> result["stop_reason"]
        'final_answer'
    """
    gates = dict(gate) if isinstance(gate, Mapping) else {getattr(gate, "name", "gate"): gate}
    nodes = RoutingNodes(tiers, gates, prices)
    builder = StateGraph(RouterState, context_schema=RouterContext, input_schema=InputState, output_schema=OutputState)
    builder.add_node("draft", nodes.draft)
    builder.add_node("features", nodes.features)
    builder.add_node("gate", nodes.gate)
    builder.add_node("escalate", nodes.escalate)
    builder.add_node("append", nodes.append)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "features")
    builder.add_edge("features", "gate")
    builder.add_conditional_edges("gate", nodes.after_gate, ["escalate", "append"])
    builder.add_conditional_edges("escalate", nodes.after_escalate, ["features", "append"])
    builder.add_conditional_edges("append", nodes.after_append, ["draft", END])
    compiled = builder.compile(checkpointer=checkpointer, name=name)
    graph = RoutingGraph(**{k: v for k, v in compiled.__dict__.items() if k != "__orig_class__"})  # as Pregel.copy does
    return graph.with_config(recursion_limit=RECURSION_LIMIT)
