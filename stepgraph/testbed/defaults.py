"""The gate defaults calibrated on the testbed: the shipped policies and the confidence threshold.

The default gate is the shipped CPO policy for the router's tiers when it is present: on the
default three tiers (``DEFAULT_TIERS``) the K-tier policy ``THREE_TIER_POLICY_DIR``, on the pair
``DEFAULT_POLICY_DIR`` (``policy_dir(n_tiers)``); otherwise a confidence-threshold gate on the
draft's logit confidence with ``DEFAULT_CONFIDENCE_THRESHOLD``, chosen on the testbed's
calibration split. They were fitted on the shipped tiers' traces: for other models, train a
policy (``stepgraph train``) or pick a threshold on your own calibration data.

``LOGITS_ONLY_POLICY_DIR`` is the policy for a draft backend that reports raw logits but no
log-probabilities (a vLLM engine or server with ``logprobs_mode="raw_logits"``): trained on the
same traces without the log-probability features, so its calibration holds there, at a higher
escalation rate. ``API_ONLY_POLICY_DIR`` is the one for a backend that reports log-probabilities
but no logits (the OpenAI API through ``ChatStepModel``): trained without ``logit_confidence``.
``THREE_TIER_POLICY_DIR`` is the K-tier policy over the shipped draft → mid → target, the default
router (``stepgraph bench --tiers 3`` trains it, κ calibrated on runs); ``DEFAULT_POLICY_DIR`` is
the pair's (draft → target; ``stepgraph solve --tiers 2``), kept under its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stepgraph.routing.gates import ConfidenceThresholdGate, Gate, PolicyGate, canonical_gate_name, make_gate
from stepgraph.testbed import DEFAULT_TIERS

POLICIES_DIR = Path(__file__).parent / "policies"
DEFAULT_POLICY_DIR = POLICIES_DIR / "default"
LOGITS_ONLY_POLICY_DIR = POLICIES_DIR / "logits_only"
API_ONLY_POLICY_DIR = POLICIES_DIR / "api_only"
THREE_TIER_POLICY_DIR = POLICIES_DIR / "three_tier"
DEFAULT_CONFIDENCE_THRESHOLD = 18.89

def policy_dir(n_tiers: int = DEFAULT_TIERS) -> Path:
    """The shipped policy for a router over ``n_tiers`` shipped tiers: 3 → ``THREE_TIER_POLICY_DIR``, 2 → ``DEFAULT_POLICY_DIR``.

    Raises:
        ValueError: the testbed ships no policy for ``n_tiers`` tiers.
    """
    dirs = {2: DEFAULT_POLICY_DIR, 3: THREE_TIER_POLICY_DIR}
    if n_tiers not in dirs:
        raise ValueError(f"The testbed ships policies for {sorted(dirs)} tiers, not {n_tiers!r}; train one for your tiers "
                         "(stepgraph train) and pass its path.")
    return dirs[n_tiers]


TESTBED_GATE_OPTIONS: dict[str, dict[str, Any]] = {
    PolicyGate.name: {"path": policy_dir()},
    ConfidenceThresholdGate.name: {"threshold": DEFAULT_CONFIDENCE_THRESHOLD},
}
"""Registry name → the options calibrated on the testbed for the default router, filled in where the caller gives none
(``resolve_gate(n_tiers=...)`` takes the policy for another tier count)."""


def default_gate_name(n_tiers: int = DEFAULT_TIERS) -> str:
    """The shipped policy's gate when the policy for ``n_tiers`` tiers is installed, else the confidence threshold."""
    return PolicyGate.name if (policy_dir(n_tiers) / "policy.json").is_file() else ConfidenceThresholdGate.name


def resolve_gate(name: str | None = None, *, n_tiers: int = DEFAULT_TIERS, **options: Any) -> Gate:
    """Make a gate by name (default: ``default_gate_name(n_tiers)``) for a router over ``n_tiers``
    shipped tiers, with the testbed's calibrated options filled in where ``options`` leaves them
    out or None (the policy: ``policy_dir(n_tiers)``).

    Example:
        >>> resolve_gate("confidence-threshold").confidence_threshold
        18.89
        >>> graph = build_graph(load_pair(), resolve_gate(n_tiers=2))  # doctest: +SKIP
    """
    name = canonical_gate_name(name or default_gate_name(n_tiers))
    given = {k: v for k, v in options.items() if v is not None}
    calibrated = TESTBED_GATE_OPTIONS.get(name, {})
    if name == PolicyGate.name:
        calibrated = {**calibrated, "path": policy_dir(n_tiers)}
    return make_gate(name, **{**calibrated, **given})
