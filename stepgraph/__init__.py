"""stepgraph: stepwise model routing for cheaper chain-of-thought reasoning, as a LangGraph graph.

A small model drafts each reasoning step; a gate decides whether a larger model regenerates it.

Example:
    >>> from stepgraph import RouterContext, build_graph, load_tiers, resolve_gate
    >>> graph = build_graph(load_tiers(), resolve_gate())  # draft → mid → target and their policy
    >>> graph.invoke({"question": "Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?"},
    ...              context=RouterContext(seed=0))["answer"]
    '9'

Names are imported on first use, so ``import stepgraph`` stays cheap (torch and transformers load
only when a model or a policy is touched).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from stepgraph import _moved

try:
    __version__ = version("stepgraph")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # the graph
    "build_graph": "stepgraph.graph",
    "RoutingGraph": "stepgraph.graph",
    "RouterContext": "stepgraph.context",
    "RouterLimits": "stepgraph.context",
    "RouterState": "stepgraph.graph.state",
    "InputState": "stepgraph.graph.state",
    "OutputState": "stepgraph.graph.state",
    "Step": "stepgraph.graph.state",
    "Prices": "stepgraph.models.costs",
    # gates
    "Gate": "stepgraph.routing.gates",
    "GateInput": "stepgraph.routing.gates",
    "GateDecision": "stepgraph.routing.gates",
    "GATES": "stepgraph.routing.gates",
    "make_gate": "stepgraph.routing.gates",
    "resolve_gate": "stepgraph.testbed.defaults",
    "AlwaysDraftGate": "stepgraph.routing.gates",
    "AlwaysTargetGate": "stepgraph.routing.gates",
    "RandomGate": "stepgraph.routing.gates",
    "ConfidenceThresholdGate": "stepgraph.routing.gates",
    "StepwiseGMMGate": "stepgraph.routing.gates",
    "PolicyGate": "stepgraph.routing.gates",
    "ExploringGate": "stepgraph.routing.gates",
    # models
    "StepModel": "stepgraph.models.base",
    "AsyncStepModel": "stepgraph.models.base",
    "agenerate": "stepgraph.models.base",
    "StepOutput": "stepgraph.models.base",
    "QuestionScore": "stepgraph.models.base",
    "TransformersStepModel": "stepgraph.models.local",
    "VLLMStepModel": "stepgraph.models.vllm_engine",
    "ChatStepModel": "stepgraph.models.chat",
    "count_parameters": "stepgraph.models.vllm_engine",
    "load_pair": "stepgraph.testbed",
    "load_tiers": "stepgraph.testbed",
    "close_pair": "stepgraph.testbed",
    # query-level routing (RADAR)
    "RadarRouter": "stepgraph.routing.radar",
    # integrations
    "ChatStepRouter": "stepgraph.integrations.chat_model",
    "routed_reasoning_tool": "stepgraph.integrations.tool",
    # errors
    "StepgraphError": "stepgraph.errors",
    "BadQuestionError": "stepgraph.errors",
    "ModelLoadError": "stepgraph.errors",
    "ModelOutputError": "stepgraph.errors",
    "PolicyFileError": "stepgraph.errors",
    "GateConfigError": "stepgraph.errors",
    "ConfigError": "stepgraph.errors",
    "TraceStoreError": "stepgraph.errors",
}

# Modules of earlier releases, now in the layer subpackages; the old paths import with a DeprecationWarning.
_MOVED = {
    "stepgraph.nodes": "stepgraph.graph.nodes",
    "stepgraph.state": "stepgraph.graph.state",
    "stepgraph.decompose": "stepgraph.graph.decompose",
    "stepgraph.gates": "stepgraph.routing.gates",
    "stepgraph.allocator": "stepgraph.routing.allocator",
    "stepgraph.allocator_file": "stepgraph.routing.learned_allocator",
    "stepgraph.radar": "stepgraph.routing.radar",
    "stepgraph.policy": "stepgraph.artifacts.policy",
    "stepgraph.tiers": "stepgraph.artifacts.tiers",
    "stepgraph.costs": "stepgraph.models.costs",
    "stepgraph.overhead": "stepgraph.benchmarks.overhead",
    "stepgraph.throughput": "stepgraph.benchmarks.throughput",
}
_moved.install(_MOVED)

__all__ = [
    "GATES",
    "AlwaysDraftGate",
    "AlwaysTargetGate",
    "AsyncStepModel",
    "BadQuestionError",
    "ChatStepModel",
    "ChatStepRouter",
    "ConfidenceThresholdGate",
    "ConfigError",
    "ExploringGate",
    "Gate",
    "GateConfigError",
    "GateDecision",
    "GateInput",
    "InputState",
    "ModelLoadError",
    "ModelOutputError",
    "OutputState",
    "PolicyFileError",
    "PolicyGate",
    "Prices",
    "QuestionScore",
    "RadarRouter",
    "RandomGate",
    "RouterContext",
    "RouterLimits",
    "RouterState",
    "RoutingGraph",
    "Step",
    "StepModel",
    "StepOutput",
    "StepgraphError",
    "StepwiseGMMGate",
    "TraceStoreError",
    "TransformersStepModel",
    "VLLMStepModel",
    "__version__",
    "agenerate",
    "build_graph",
    "close_pair",
    "count_parameters",
    "load_pair",
    "load_tiers",
    "make_gate",
    "resolve_gate",
    "routed_reasoning_tool",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stepgraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static type checkers and IDEs see the real names
    from stepgraph.context import RouterContext, RouterLimits
    from stepgraph.errors import (
        BadQuestionError,
        ConfigError,
        GateConfigError,
        ModelLoadError,
        ModelOutputError,
        PolicyFileError,
        StepgraphError,
        TraceStoreError,
    )
    from stepgraph.graph import RoutingGraph, build_graph
    from stepgraph.graph.state import InputState, OutputState, RouterState, Step
    from stepgraph.integrations.chat_model import ChatStepRouter
    from stepgraph.integrations.tool import routed_reasoning_tool
    from stepgraph.models.base import AsyncStepModel, QuestionScore, StepModel, StepOutput, agenerate
    from stepgraph.models.chat import ChatStepModel
    from stepgraph.models.costs import Prices
    from stepgraph.models.local import TransformersStepModel
    from stepgraph.models.vllm_engine import VLLMStepModel, count_parameters
    from stepgraph.routing.gates import (
        GATES,
        AlwaysDraftGate,
        AlwaysTargetGate,
        ConfidenceThresholdGate,
        ExploringGate,
        Gate,
        GateDecision,
        GateInput,
        PolicyGate,
        RandomGate,
        StepwiseGMMGate,
        make_gate,
    )
    from stepgraph.routing.radar import RadarRouter
    from stepgraph.testbed import close_pair, load_pair, load_tiers
    from stepgraph.testbed.defaults import resolve_gate
