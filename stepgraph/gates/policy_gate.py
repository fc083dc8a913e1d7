"""The CPO policy gate: escalate iff π(escalate | o) ≥ κ."""

from __future__ import annotations

from pathlib import Path

from stepgraph.gates.base import Gate, GateInput
from stepgraph.policy import PolicyArtifact


class PolicyGate(Gate):
    """Applies a trained policy artifact; its κ is the threshold.

    κ comes from the artifact, not from the caller, because training chose it together with the
    weights (to meet the coverage target α); a different κ is a different, uncalibrated policy.

    Args:
        artifact: a loaded PolicyArtifact (``PolicyGate.from_path`` loads and validates one).

    Example:
        >>> from stepgraph.defaults import DEFAULT_POLICY_DIR
        >>> gate = PolicyGate.from_path(DEFAULT_POLICY_DIR)  # doctest: +SKIP
    """

    name = "policy"

    def __init__(self, artifact: PolicyArtifact) -> None:
        self.artifact = artifact
        self.threshold = artifact.kappa

    @classmethod
    def from_path(cls, directory: str | Path) -> PolicyGate:
        """Load an artifact directory.

        Raises:
            PolicyFileError: the files are missing, corrupted, or of another feature schema.
        """
        return cls(PolicyArtifact.load(directory))

    def score(self, x: GateInput) -> float:
        """π(escalate | o) of the draft's observation."""
        return self.artifact.escalate_probability(x.observation)
