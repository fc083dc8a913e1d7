"""The stepwise router on the shipped testbed pair, as LangGraph Studio and ``langgraph dev`` serve it.

The run's ``gate`` context field picks among: the embedded default (the shipped policy, else a
confidence threshold), ``threshold``, ``draft`` (never escalate) and ``target`` (always).
``graphs/router.py`` (what ``langgraph.json`` points at) only re-exports this graph.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def default_graph() -> Any:
    """The shipped pair with its gates, built once per process (the chat model and tool share it)."""
    from stepgraph.defaults import default_gate_name, resolve_gate
    from stepgraph.gates import AlwaysDraftGate, AlwaysTargetGate
    from stepgraph.graph import build_graph
    from stepgraph.testbed import load_pair

    gates = {
        default_gate_name(): resolve_gate(),
        "threshold": resolve_gate("threshold"),
        "draft": AlwaysDraftGate(),
        "target": AlwaysTargetGate(),
    }
    return build_graph(load_pair(), gates, name="stepgraph")
