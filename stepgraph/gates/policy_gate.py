"""The CPO policy gate: escalate iff π(escalate | o) ≥ κ."""

from __future__ import annotations

from pathlib import Path

from stepgraph.gates.base import Gate, GateInput
from stepgraph.policy import PolicyArtifact


class PolicyGate(Gate):
    """Applies a trained policy artifact; its κ is the threshold.

    Args:
        artifact: a loaded PolicyArtifact (``PolicyGate.from_path`` loads and validates one).
    """

    name = "policy"

    def __init__(self, artifact: PolicyArtifact) -> None:
        self.artifact = artifact
        self.threshold = artifact.kappa

    @classmethod
    def from_path(cls, directory: str | Path) -> PolicyGate:
        """Load an artifact directory; raises PolicyFileError if it is missing, corrupted or mismatched."""
        return cls(PolicyArtifact.load(directory))

    def score(self, x: GateInput) -> float:
        return self.artifact.escalate_probability(x.observation)
