"""The stepwise router on the shipped testbed pair, for LangGraph Studio and ``langgraph dev``.

The run's ``gate`` context field picks among: the embedded default (the shipped policy, else a
confidence threshold), ``threshold``, ``draft`` (never escalate) and ``target`` (always).
"""

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
graph = build_graph(load_pair(), gates, name="stepgraph")
