"""The embedded default: the shipped testbed pair and its default gate.

The default gate is the shipped CPO policy (``stepgraph/policies/default``) when it is
present; otherwise a confidence-threshold gate on the STEER score with
``DEFAULT_CONFIDENCE_THRESHOLD``, chosen on the testbed's calibration split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stepgraph.gates import make_gate
from stepgraph.gates.base import Gate

DEFAULT_POLICY_DIR = Path(__file__).parent / "policies" / "default"
DEFAULT_CONFIDENCE_THRESHOLD = 16.0


def default_gate_name() -> str:
    return "policy" if (DEFAULT_POLICY_DIR / "policy.json").is_file() else "threshold"


def resolve_gate(name: str | None = None, **options: Any) -> Gate:
    """Make a gate by name with the embedded defaults filled in (policy file, threshold)."""
    name = name or default_gate_name()
    options = {k: v for k, v in options.items() if v is not None}
    if name == "policy":
        options.setdefault("path", DEFAULT_POLICY_DIR)
    if name == "threshold":
        options.setdefault("threshold", DEFAULT_CONFIDENCE_THRESHOLD)
    return make_gate(name, **options)
