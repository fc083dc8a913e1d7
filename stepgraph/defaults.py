"""The embedded default: the shipped testbed pair and its default gate.

The default gate is the shipped CPO policy (``stepgraph/policies/default``) when it is
present; otherwise a confidence-threshold gate on the STEER score with
``DEFAULT_CONFIDENCE_THRESHOLD``, chosen on the testbed's calibration split.

``LOGITS_ONLY_POLICY_DIR`` is the policy for a draft backend that reports raw logits but no
log-probabilities (a vLLM engine or server with ``logprobs_mode="raw_logits"``): trained on the
same traces without ``api_confidence``, so its calibration holds there, at a higher escalation rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stepgraph.gates import make_gate
from stepgraph.gates.base import Gate

DEFAULT_POLICY_DIR = Path(__file__).parent / "policies" / "default"
LOGITS_ONLY_POLICY_DIR = Path(__file__).parent / "policies" / "logits_only"
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
