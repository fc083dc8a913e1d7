"""Build the stepwise routing graph.

    START → start → draft → features → gate ─┬─(accept)────────→ append ─┬─(more)→ draft
                                     └─(escalate)→ escalate ─┘   └─(done)→ END

With more than two tiers, ``escalate`` goes back to ``features`` so the gate is asked again
on the escalated draft, until the strongest tier writes the step. ``start`` runs once per new
question: on a thread with a checkpointer, a new question starts a fresh answer, while
``invoke(None, config)`` resumes an interrupted one where it stopped.

Two opt-in modes add a node each (the default graph has neither): with an ``allocator`` an
``allocate`` node picks the tier before every ``draft`` (``append`` loops back to it), and with a
``decomposer`` a ``plan`` node between ``start`` and the first step asks for sub-questions.

Every node has a sync and an async body: ``invoke``/``batch``/``stream`` call the models'
``generate_step``; ``ainvoke``/``abatch``/``astream`` await ``agenerate_step`` where a model has
one (else a worker thread per call) and run the cheap nodes inline on the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import get_runtime
from langgraph.types import Checkpointer

from stepgraph.artifacts.tiers import check_tiers, describe, recorded_tiers
from stepgraph.context import RouterContext, RouterLimits
from stepgraph.graph.nodes import RoutingNodes
from stepgraph.graph.state import InputState, OutputState, PlannedOutputState, RouterState
from stepgraph.models.base import StepModel
from stepgraph.models.costs import Prices
from stepgraph.routing.allocator import AllocateNode, Allocator
from stepgraph.routing.gates.base import Gate

if TYPE_CHECKING:
    from stepgraph.graph.decompose import Decomposer

# Each step takes at most 3 + 2·(tiers − 1) super-steps; the limit only guards against bugs,
# the run's own stop rules (final answer, max_steps, budget) end it first.
RECURSION_LIMIT = 10_000


class RoutingGraph(CompiledStateGraph[RouterState, RouterContext, InputState, OutputState]):
    """The compiled routing graph: a ``CompiledStateGraph`` whose batch methods keep its recursion limit.

    LangChain's ``batch`` fills every input's config with the default limit (25 super-steps)
    before the graph sees it, and that overrides the limit bound with ``with_config``: a batch of
    long answers would stop with ``GraphRecursionError``. A limit the caller sets still wins.

    It adds methods only, no state: ``build_graph`` gives the graph ``StateGraph.compile`` made
    this class, so nothing of LangGraph's is rebuilt (``copy`` and ``with_config`` keep the class).
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


Node = Callable[[Any, Any], dict[str, Any]]


class _Node(Runnable[Any, dict[str, Any]]):
    """A node with a sync and an async body, each called as ``body(state, runtime)``.

    Without ``afunc`` the async body runs ``func`` inline: it is cheap CPU work, and LangGraph's
    default for a plain function (a worker thread per call) would cost a thread per run. The
    runtime comes from ``langgraph.runtime.get_runtime``; the node is not traced as a run of its
    own, since LangGraph already traces each node.
    """

    def __init__(self, func: Node, afunc: Callable[[Any, Any], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.func, self.afunc, self.name = func, afunc, func.__name__

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.func(input, get_runtime())

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        runtime = get_runtime()
        return await self.afunc(input, runtime) if self.afunc is not None else self.func(input, runtime)


def build_graph(
    tiers: Sequence[StepModel],
    gate: Gate | Mapping[str, Gate],
    *,
    prices: Sequence[Prices] | None = None,
    checkpointer: Checkpointer = None,
    limits: RouterLimits | None = None,
    allow_other_tiers: bool = False,
    name: str = "stepgraph",
    allocator: Allocator | None = None,
    decomposer: Decomposer | None = None,
) -> CompiledStateGraph[RouterState, RouterContext, InputState, OutputState]:
    """Compile the routing graph over ``tiers`` (cheapest first) with one or more gates.

    Args:
        tiers: the models, tier 0 drafting; K ≥ 2.
        gate: a gate, or gates by name (the first is the default; ``RouterContext.gate`` picks).
        prices: API prices per tier, for the dollar cost.
        checkpointer: a LangGraph checkpointer, to resume interrupted runs.
        limits: the operator's limits on question length and run settings, which no run's
            context can lift (default: ``RouterLimits()``).
        allow_other_tiers: use a policy whose artifact records other tiers than ``tiers`` (its
            calibrated coverage does not carry over); by default that is refused.
        name: the compiled graph's name.
        allocator: opt-in ex-ante allocator (``stepgraph.routing.allocator``): an ``allocate`` node before
            every ``draft`` picks the step's tier, so a step sent up costs no draft call.
        decomposer: opt-in decomposer mode (``stepgraph.graph.decompose``): a ``plan`` node after
            ``start`` asks for numbered sub-questions that every step is then written for; the
            output gains ``plan``.

    Raises:
        PolicyFileError: a gate's artifact was trained on other tiers (see ``allow_other_tiers``).

    Example:
        >>> from stepgraph.routing.gates import AlwaysDraftGate
        >>> from stepgraph.testbed import load_pair
        >>> graph = build_graph(load_pair(), AlwaysDraftGate())
        >>> result = graph.invoke({"question": "Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?"})
        >>> result["stop_reason"]
        'final_answer'
    """
    gates = dict(gate) if isinstance(gate, Mapping) else {getattr(gate, "name", "gate"): gate}
    for gate_name, one in gates.items():
        if (recorded := recorded_tiers(one)) and not getattr(one, "allow_other_tiers", False):
            check_tiers(recorded, describe(tiers), f"The {gate_name!r} gate's artifact", allow_other_tiers)
    nodes = RoutingNodes(tiers, gates, prices, limits)
    output: type[OutputState] = OutputState if decomposer is None else PlannedOutputState
    builder = StateGraph(RouterState, context_schema=RouterContext, input_schema=InputState, output_schema=output)
    builder.add_node("start", _Node(nodes.start, nodes.astart))
    builder.add_node("draft", _Node(nodes.draft, nodes.adraft))
    builder.add_node("features", _Node(nodes.features))
    builder.add_node("gate", _Node(nodes.gate))
    builder.add_node("escalate", _Node(nodes.escalate, nodes.aescalate))
    builder.add_node("append", _Node(nodes.append))
    builder.add_edge(START, "start")
    next_step = "draft"  # where a new step begins: draft, or allocate in a graph with an allocator
    if allocator is not None:
        builder.add_node("allocate", _Node(AllocateNode(allocator, len(tiers)).allocate))
        builder.add_edge("allocate", "draft")
        next_step = "allocate"
    if decomposer is not None:
        from stepgraph.graph.decompose import PlanNode

        planner = PlanNode(decomposer, tiers, prices)
        builder.add_node("plan", _Node(planner.plan, planner.aplan))
        builder.add_edge("start", "plan")
        builder.add_edge("plan", next_step)
    else:
        builder.add_edge("start", next_step)
    builder.add_edge("draft", "features")
    builder.add_edge("features", "gate")
    builder.add_conditional_edges("gate", nodes.after_gate, ["escalate", "append"])
    builder.add_conditional_edges("escalate", nodes.after_escalate, ["features", "append"])
    builder.add_conditional_edges("append", nodes.after_append, {"draft": next_step, END: END})
    graph = builder.compile(checkpointer=checkpointer, name=name)
    graph.__class__ = RoutingGraph
    return graph.with_config(recursion_limit=RECURSION_LIMIT)
