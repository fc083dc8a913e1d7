"""Gates: map a drafted step to accept / escalate. Find one by name with ``make_gate``.

The registry is built from the gate classes: each declares its ``name`` (and former names in
``aliases``), the ``options`` it is built from, and ``from_options``. The CLI's ``--gate`` and
per-gate flags, the Studio graph and the testbed defaults all read it.

Example:
    >>> gate = make_gate("confidence-threshold", threshold=16.0)
    >>> type(gate).__name__, gate.confidence_threshold
    ('ConfidenceThresholdGate', 16.0)
    >>> canonical_gate_name("threshold")  # a former name
    'confidence-threshold'
"""

from __future__ import annotations

from typing import Any

from stepgraph.errors import GateConfigError
from stepgraph.routing.gates.base import Gate, GateDecision, GateInput, GateOption
from stepgraph.routing.gates.exploring import ExploringGate
from stepgraph.routing.gates.policy_gate import PolicyGate
from stepgraph.routing.gates.simple import (
    AlwaysDraftGate,
    AlwaysTargetGate,
    ConfidenceThresholdGate,
    FeatureRuleGate,
    RandomGate,
)
from stepgraph.routing.gates.steer import StepwiseGMMGate

REGISTERED: tuple[type[Gate], ...] = (
    PolicyGate, ConfidenceThresholdGate, StepwiseGMMGate, FeatureRuleGate, RandomGate, AlwaysDraftGate, AlwaysTargetGate,
)
"""The gates ``make_gate`` builds by name, in the order the CLI lists them."""

GATES: dict[str, type[Gate]] = {cls.name: cls for cls in REGISTERED}
"""Registry name → gate class."""

ALIASES: dict[str, str] = {alias: cls.name for cls in REGISTERED for alias in cls.aliases}
"""Former name → registry name; the former names keep working everywhere a gate is named."""


def canonical_gate_name(name: str) -> str:
    """The registry name of ``name`` (itself or a former name).

    Raises:
        GateConfigError: an unknown name.
    """
    name = ALIASES.get(name, name)
    if name not in GATES:
        raise GateConfigError(f"Unknown gate {name!r}; choose one of {', '.join(sorted(GATES))} "
                              f"(former names: {', '.join(sorted(ALIASES))}).")
    return name


def make_gate(name: str, **options: Any) -> Gate:
    """Build a gate by registry name (or a former name) from its options.

    ``policy`` and ``stepwise-gmm`` are loaded from files: both take ``path=`` (the policy
    directory, the saved STEER JSON), and ``stepwise-gmm`` optionally ``threshold=`` to override
    the saved posterior threshold. The other gates take their constructor's keyword arguments.
    Each class's ``options`` lists what it takes.

    Raises:
        GateConfigError (a ValueError): an unknown name, an option the gate does not take, or a
            file-backed gate without ``path``.
        PolicyFileError: the policy artifact is missing, corrupted or of another feature schema.
    """
    cls = GATES[canonical_gate_name(name)]
    if unexpected := set(options) - set(cls.options):
        raise GateConfigError(f"Gate {cls.name!r} takes only {sorted(cls.options)}, not {sorted(unexpected)}.")
    return cls.from_options(**options)


__all__ = [
    "ALIASES",
    "GATES",
    "REGISTERED",
    "AlwaysDraftGate",
    "AlwaysTargetGate",
    "ConfidenceThresholdGate",
    "ExploringGate",
    "FeatureRuleGate",
    "Gate",
    "GateDecision",
    "GateInput",
    "GateOption",
    "PolicyGate",
    "RandomGate",
    "StepwiseGMMGate",
    "canonical_gate_name",
    "make_gate",
]
