"""Compatibility re-export: the testbed-calibrated gate defaults live in ``stepgraph.testbed.defaults``."""

from stepgraph.testbed.defaults import (
    API_ONLY_POLICY_DIR,
    DEFAULT_CONFIDENCE_THRESHOLD,
    DEFAULT_POLICY_DIR,
    LOGITS_ONLY_POLICY_DIR,
    THREE_TIER_POLICY_DIR,
    default_gate_name,
    resolve_gate,
)

__all__ = ["API_ONLY_POLICY_DIR", "DEFAULT_CONFIDENCE_THRESHOLD", "DEFAULT_POLICY_DIR", "LOGITS_ONLY_POLICY_DIR", "THREE_TIER_POLICY_DIR", "default_gate_name", "resolve_gate"]
