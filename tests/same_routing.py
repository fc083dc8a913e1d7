"""The check both real-vLLM suites share: a backend routes exactly like the local transformers one."""

from __future__ import annotations

import pytest

from stepgraph.context import RouterContext
from stepgraph.defaults import resolve_gate
from stepgraph.graph import build_graph

GREEDY = RouterContext(temperature=0.0, seed=0)


def assert_routes_like(backend, reference, questions) -> None:
    """Same tokens, same features, same threshold decisions, same FLOPs on every question."""
    on_backend = build_graph(list(backend), resolve_gate("threshold"))
    on_reference = build_graph(list(reference), resolve_gate("threshold"))
    for question in questions:
        ours = on_backend.invoke({"question": question}, context=GREEDY)
        theirs = on_reference.invoke({"question": question}, context=GREEDY)
        assert [(s["text"], s["escalated"]) for s in ours["steps"]] == [(s["text"], s["escalated"]) for s in theirs["steps"]]
        assert ours["answer"] == theirs["answer"] and ours["stop_reason"] == "final_answer"
        assert ours["totals"]["flops"] == pytest.approx(theirs["totals"]["flops"])
