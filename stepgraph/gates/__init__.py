"""Gates: map a drafted step to accept / escalate. Find one by name with ``make_gate``."""

from __future__ import annotations

from typing import Any

from stepgraph.gates.base import Gate, GateDecision, GateInput
from stepgraph.gates.exploring import ExploringGate
from stepgraph.gates.policy_gate import PolicyGate
from stepgraph.gates.simple import AlwaysDraftGate, AlwaysTargetGate, ConfidenceThresholdGate, RandomGate
from stepgraph.gates.steer import StepwiseGMMGate

GATES: dict[str, type[Gate]] = {
    "draft": AlwaysDraftGate,
    "target": AlwaysTargetGate,
    "random": RandomGate,
    "threshold": ConfidenceThresholdGate,
    "steer": StepwiseGMMGate,
    "policy": PolicyGate,
}


def make_gate(name: str, **options: Any) -> Gate:
    """Build a gate by registry name; ``policy`` and ``steer`` take ``path=`` to their saved files."""
    if name not in GATES:
        raise ValueError(f"Unknown gate {name!r}; choose one of {sorted(GATES)}.")
    if name == "policy":
        return PolicyGate.from_path(options["path"])
    if name == "steer":
        gate = StepwiseGMMGate.load(options["path"])
        if options.get("threshold") is not None:
            gate.threshold = float(options["threshold"])
        return gate
    return GATES[name](**options)


__all__ = [
    "GATES", "AlwaysDraftGate", "AlwaysTargetGate", "ConfidenceThresholdGate", "ExploringGate", "Gate",
    "GateDecision", "GateInput", "PolicyGate", "RandomGate", "StepwiseGMMGate", "make_gate",
]
