"""Deprecated: ``PolicyGate`` routes K-tier policies itself; ``TierPolicyGate`` is its former name."""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name != "TierPolicyGate":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn("stepgraph.routing.gates.tier_policy_gate.TierPolicyGate is deprecated: use stepgraph.routing.gates.PolicyGate, "
                  "which routes 2-tier and K-tier policies.", DeprecationWarning, stacklevel=2)
    from stepgraph.routing.gates.policy_gate import PolicyGate

    return PolicyGate
