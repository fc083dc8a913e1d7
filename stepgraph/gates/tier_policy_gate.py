"""The K-tier policy gate: escalate iff π(escalate | o, k) ≥ κ, to the stronger tier π finds most likely."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from stepgraph.gates.base import GateDecision, GateInput
from stepgraph.gates.policy_gate import PolicyGate

if TYPE_CHECKING:
    from stepgraph.tier_policy import TierPolicyArtifact


class TierPolicyGate(PolicyGate):
    """Applies a ``stepgraph.tier_policy`` artifact (``PolicyGate.from_path`` returns one for such a directory).

    On a step written by tier k it escalates when 1 − π(k | o, k) ≥ κ, and names the tier to jump
    to in ``GateDecision.tier``: the most likely tier above k. The graph asks again on that tier's
    step. A tier the policy was not trained on (a graph with more tiers) gets a NaN score, which
    escalates to the next tier: the safe side.

    Args:
        artifact: a loaded TierPolicyArtifact.

    Example:
        >>> gate = TierPolicyGate.from_path("runs/tier_policy")  # doctest: +SKIP
    """

    def __init__(self, artifact: TierPolicyArtifact) -> None:  # type: ignore[override]
        super().__init__(artifact)  # type: ignore[arg-type]  # κ, schema and ignored features: what PolicyGate reads
        self.tier_artifact = artifact

    @classmethod
    def from_path(cls, directory: str | Path) -> TierPolicyGate:
        from stepgraph.tier_policy import TierPolicyArtifact

        return cls(TierPolicyArtifact.load(directory))

    def _probabilities(self, x: GateInput) -> list[float] | None:
        if not 0 <= x.tier < len(self.tier_artifact.tiers) - 1:
            return None
        return self.tier_artifact.probabilities(x.observation, x.tier)

    def score(self, x: GateInput) -> float:
        """π(escalate | o, k) = 1 − π(k | o, k); NaN for a tier the policy does not route from."""
        self._warn_on_missing(x.observation)
        probs = self._probabilities(x)
        return math.nan if probs is None else 1.0 - probs[x.tier]

    def decide_on_score(self, x: GateInput, score: float) -> GateDecision:
        escalate = score >= self.threshold
        if not escalate:
            return GateDecision(False, score, 0.0)
        probs = self._probabilities(x) or []
        above = range(x.tier + 1, len(probs))
        return GateDecision(True, score, 1.0, tier=max(above, key=lambda j: probs[j]) if above else None)
