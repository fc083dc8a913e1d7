"""Gates: map a drafted step to accept / escalate. Find one by name with ``make_gate``.

Example:
    >>> gate = make_gate("threshold", threshold=16.0)
    >>> type(gate).__name__, gate.confidence_threshold
    ('ConfidenceThresholdGate', 16.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stepgraph.errors import GateConfigError
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
"""Registry name → gate class; ``make_gate`` builds one by name."""

_FILE_OPTIONS = {"policy": {"path"}, "steer": {"path", "threshold"}}


def make_gate(name: str, **options: Any) -> Gate:
    """Build a gate by registry name.

    ``policy`` and ``steer`` are loaded from files: both take ``path=`` (the policy directory,
    the saved STEER JSON), and ``steer`` optionally ``threshold=`` to override the saved
    posterior threshold. The other gates take their constructor's keyword arguments.

    Raises:
        ValueError: an unknown name, or a file-backed gate without ``path`` or with options it
            does not take.
        PolicyFileError: the policy artifact is missing, corrupted or of another feature schema.
    """
    if name not in GATES:
        raise GateConfigError(f"Unknown gate {name!r}; choose one of {', '.join(sorted(GATES))}.")
    if name not in _FILE_OPTIONS:
        return GATES[name](**options)
    unexpected = set(options) - _FILE_OPTIONS[name]
    if unexpected:
        raise GateConfigError(f"Gate {name!r} takes only {sorted(_FILE_OPTIONS[name])}, not {sorted(unexpected)}.")
    if options.get("path") is None:
        what = "a policy artifact directory" if name == "policy" else "a fitted STEER gate JSON file"
        raise GateConfigError(f"Gate {name!r} needs path= to {what}.")
    path = Path(options["path"])
    if name == "policy":
        return PolicyGate.from_path(path)
    gate = StepwiseGMMGate.load(path)
    if options.get("threshold") is not None:
        gate = StepwiseGMMGate(gate.mixtures, gate.pooled, float(options["threshold"]), gate.feature)  # validates it
    return gate


__all__ = [
    "GATES",
    "AlwaysDraftGate",
    "AlwaysTargetGate",
    "ConfidenceThresholdGate",
    "ExploringGate",
    "Gate",
    "GateDecision",
    "GateInput",
    "PolicyGate",
    "RandomGate",
    "StepwiseGMMGate",
    "make_gate",
]
