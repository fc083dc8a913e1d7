"""The graph layer: the step cycle's state, nodes and the builder that wires them into a LangGraph graph.

``build`` (``build_graph``, ``RoutingGraph``), ``state`` (what flows between nodes), ``nodes`` (draft →
features → gate → escalate → append) and ``decompose`` (the opt-in planner). It imports models,
features, artifacts and routing, never integrations or the CLI.
"""

from stepgraph.graph.build import RECURSION_LIMIT, RoutingGraph, build_graph

__all__ = ["RECURSION_LIMIT", "RoutingGraph", "build_graph"]
