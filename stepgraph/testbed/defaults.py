"""The gate defaults calibrated on the testbed: the shipped policies and the confidence threshold.

The default gate is the shipped CPO policy (``stepgraph/testbed/policies/default``) when it is
present; otherwise a confidence-threshold gate on the STEER score with
``DEFAULT_CONFIDENCE_THRESHOLD``, chosen on the testbed's calibration split. Both were fitted on
the shipped pair's traces: for other models, train a policy (``stepgraph train``) or pick a
threshold on your own calibration data.

``LOGITS_ONLY_POLICY_DIR`` is the policy for a draft backend that reports raw logits but no
log-probabilities (a vLLM engine or server with ``logprobs_mode="raw_logits"``): trained on the
same traces without the log-probability features, so its calibration holds there, at a higher
escalation rate. ``API_ONLY_POLICY_DIR`` is the one for a backend that reports log-probabilities
but no logits (the OpenAI API through ``ChatStepModel``): trained without ``logit_confidence``.
``THREE_TIER_POLICY_DIR`` is the K-tier policy over the shipped draft → mid → target
(``stepgraph solve --tiers 3``; ``stepgraph bench --tiers 3`` trains it, κ calibrated on runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stepgraph.routing.gates import ConfidenceThresholdGate, Gate, PolicyGate, canonical_gate_name, make_gate

POLICIES_DIR = Path(__file__).parent / "policies"
DEFAULT_POLICY_DIR = POLICIES_DIR / "default"
LOGITS_ONLY_POLICY_DIR = POLICIES_DIR / "logits_only"
API_ONLY_POLICY_DIR = POLICIES_DIR / "api_only"
THREE_TIER_POLICY_DIR = POLICIES_DIR / "three_tier"
DEFAULT_CONFIDENCE_THRESHOLD = 21.39

TESTBED_GATE_OPTIONS: dict[str, dict[str, Any]] = {
    PolicyGate.name: {"path": DEFAULT_POLICY_DIR},
    ConfidenceThresholdGate.name: {"threshold": DEFAULT_CONFIDENCE_THRESHOLD},
}
"""Registry name → the options calibrated on the testbed, filled in where the caller gives none."""


def default_gate_name() -> str:
    """The shipped policy's gate when the policy is installed, else the confidence threshold."""
    return PolicyGate.name if (DEFAULT_POLICY_DIR / "policy.json").is_file() else ConfidenceThresholdGate.name


def resolve_gate(name: str | None = None, **options: Any) -> Gate:
    """Make a gate by name (default: ``default_gate_name()``) with the testbed's calibrated options
    filled in where ``options`` leaves them out or None.

    Example:
        >>> resolve_gate("confidence-threshold").confidence_threshold
        21.39
    """
    name = canonical_gate_name(name or default_gate_name())
    given = {k: v for k, v in options.items() if v is not None}
    return make_gate(name, **{**TESTBED_GATE_OPTIONS.get(name, {}), **given})
