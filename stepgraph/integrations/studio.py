"""The stepwise router on the shipped testbed pair, as LangGraph Studio and ``langgraph dev`` serve it.

The run's ``gate`` context field picks among ``STUDIO_GATES`` (registry names, first the default:
the shipped policy, else the confidence threshold), each built with the testbed defaults; the
gates' former names (``threshold``, ``draft``, ``target``) pick the same gates.
``graphs/router.py`` (what ``langgraph.json`` points at) only re-exports this graph.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

STUDIO_GATES = ("confidence-threshold", "never-escalate", "always-escalate")
"""The registered gates the Studio graph offers besides the default (all need no file of their own)."""


@lru_cache(maxsize=1)
def default_graph() -> Any:
    """The shipped pair with its gates, built once per process (the chat model and tool share it)."""
    from stepgraph.gates import ALIASES
    from stepgraph.graph import build_graph
    from stepgraph.testbed import load_pair
    from stepgraph.testbed.defaults import default_gate_name, resolve_gate

    gates = {name: resolve_gate(name) for name in dict.fromkeys((default_gate_name(), *STUDIO_GATES))}
    gates |= {alias: gates[name] for alias, name in ALIASES.items() if name in gates}  # former names, same gates
    return build_graph(load_pair(), gates, name="stepgraph")
