"""The CPO policy gate for K ≥ 2 tiers: escalate iff the log-odds of π(escalate | o, k) is ≥ κ.

Two tiers is K = 2: the step goes to the next tier up. With a network that reads the tier it goes
to the stronger tier π finds most likely (``GateDecision.tier``) and the graph asks again on that
tier's step; a tier the policy does not route from gets a NaN score, which escalates to the next
tier (the safe side).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from stepgraph.errors import GateConfigError
from stepgraph.features import SITUATIONAL
from stepgraph.routing.gates.base import Gate, GateDecision, GateInput, GateOption

if TYPE_CHECKING:  # torch loads with the first policy, not with the gate registry
    from stepgraph.artifacts.policy import PolicyArtifact


class PolicyGate(Gate):
    """Applies a trained policy artifact; its κ is the threshold.

    κ comes from the artifact, not from the caller, because training chose it together with the
    weights (to meet the coverage target α); a different κ is a different, uncalibrated policy.

    Args:
        artifact: a loaded PolicyArtifact (``PolicyGate.from_path`` loads and validates one, of any format).

    Example:
        >>> from stepgraph.testbed.defaults import DEFAULT_POLICY_DIR
        >>> gate = PolicyGate.from_path(DEFAULT_POLICY_DIR)  # doctest: +SKIP
    """

    name = "policy"
    options: ClassVar[Mapping[str, GateOption]] = {"path": GateOption("--policy", Path, "the policy artifact directory")}

    def __init__(self, artifact: PolicyArtifact) -> None:
        self.artifact = artifact
        self.threshold = artifact.kappa
        self.domain = artifact.domain
        self.trained_on = [n for n in artifact.schema.names if n not in artifact.ignored]
        self._reported = [n for n in self.trained_on if n not in SITUATIONAL]  # None means the backend lacks it
        self._warned: set[str] = set()

    @classmethod
    def from_path(cls, directory: str | Path) -> PolicyGate:
        """Load a policy artifact directory (an older format converted, see ``stepgraph.artifacts.policy``).

        Raises:
            PolicyFileError: the files are missing, corrupted, or of another feature schema.
        """
        from stepgraph.artifacts.policy import PolicyArtifact

        return cls(PolicyArtifact.load(directory))

    @classmethod
    def from_options(cls, **options: Any) -> PolicyGate:
        """``from_path`` for the registry: ``path=`` is required."""
        path = options.get("path")
        if path is None:
            raise GateConfigError(f"Gate {cls.name!r} needs path= to a policy artifact directory (CLI: --policy DIR).")
        return cls.from_path(path)

    def score(self, x: GateInput) -> float:
        """The log-odds of π(escalate | o, k) for the draft's observation."""
        self._warn_on_missing(x.observation)
        return self.artifact.score(x.observation, x.tier)

    def decide_on_score(self, x: GateInput, score: float) -> GateDecision:
        if score < self.threshold:
            return GateDecision(False, score, 0.0)
        return GateDecision(True, score, 1.0, tier=self.artifact.escalation_tier(x.observation, x.tier))

    def _warn_on_missing(self, observation: dict[str, float | None]) -> None:
        missing = [n for n in self._reported if observation.get(n) is None and n not in self._warned]
        if not missing:
            return
        self._warned.update(missing)  # one warning per backend gap, naming every feature it lacks
        names = ", ".join(repr(n) for n in missing)
        warnings.warn(
            f"The policy was trained with {names} but the draft's backend does not report "
            f"{'it' if len(missing) == 1 else 'them'}; missing features are imputed with their training mean, and the "
            "calibrated coverage no longer holds (e.g. a vLLM engine with logprobs_mode='raw_logits' has no "
            "log-probabilities). Use a policy trained without them: stepgraph.testbed.defaults.LOGITS_ONLY_POLICY_DIR "
            "for the shipped pair, or `stepgraph train --ignore-feature NAME` on your traces.",
            RuntimeWarning,
            stacklevel=2,
        )
