"""Deprecated: the K-tier policy now lives in ``stepgraph.artifacts.policy`` with the 2-tier one."""

from __future__ import annotations

import warnings
from typing import Any

_MOVED = {"TierPolicyArtifact", "TierPolicyNetwork", "TierManifest", "tier_inputs", "MAX_TIERS", "MASKED"}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"stepgraph.tier_policy.{name} is deprecated: import it from stepgraph.artifacts.policy.", DeprecationWarning,
                  stacklevel=2)
    from stepgraph import policy

    return getattr(policy, name)
