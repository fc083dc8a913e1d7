"""STEER's gate: per step position, a two-component Gaussian mixture over confidence scores.

STEER (Lee et al. 2025, confidence-guided stepwise routing) models the draft's confidence at
each step position as a mixture of a low-confidence and a high-confidence component, fitted
without labels on recorded scores. A draft escalates when the posterior of the low component,
given its score, reaches the threshold. Positions differ because early steps (restating the
problem) are more confident than late ones (the arithmetic), so one global cut-off would
escalate too many late steps or too few early ones. Positions past the last fitted bucket use
the last bucket; a bucket with too few scores for a stable fit uses the mixture fitted on all
positions pooled.

The fitted gate is saved as JSON (never pickle) with a format name and version.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stepgraph.errors import GateConfigError
from stepgraph.routing.gates.base import Gate, GateInput, GateOption
from stepgraph.routing.gates.simple import CONFIDENCE_FEATURES, confidence_of

FORMAT = "stepgraph.steer"
FORMAT_VERSION = 1
VARIANCE_FLOOR = 1e-4
"""Smallest component variance: keeps EM from collapsing a component onto a repeated score."""


@dataclass(frozen=True)
class Mixture:
    """A 1-D two-component Gaussian mixture; component 0 has the lower mean."""

    weights: tuple[float, float]
    means: tuple[float, float]
    variances: tuple[float, float]

    def low_posterior(self, x: float) -> float:
        """P(low component | x), with ``x`` first clamped to [low mean, high mean].

        The clamp keeps the posterior from turning around in the tails: when the components'
        variances differ, the raw posterior of the wider one goes to 1 far out on *both* sides,
        which would escalate the most confident drafts (or accept the least confident ones).
        A draft more confident than the high mean is treated as sitting on it, and so on.
        """
        x = min(max(x, self.means[0]), self.means[1])
        log_low, log_high = (math.log(w) - 0.5 * math.log(2 * math.pi * v) - (x - m) ** 2 / (2 * v)
                             for w, m, v in zip(self.weights, self.means, self.variances, strict=True))
        gap = log_high - log_low
        return 0.0 if gap > 700 else 1.0 / (1.0 + math.exp(gap))  # exp overflows past ~709


def fit_mixture(scores: Sequence[float], iterations: int = 200, tol: float = 1e-8) -> Mixture:
    """Fit a two-component mixture by EM.

    The start is deterministic (means at the 25th and 75th percentiles, equal weights, both
    variances the overall variance) so the same scores always give the same gate.

    Args:
        scores: finite confidence scores; at least two.
        iterations: EM iterations at most.
        tol: stop when no mean moves by more than this.

    Raises:
        ValueError: fewer than two scores, or a non-finite score.
    """
    x = np.asarray(scores, dtype=float)
    if x.size < 2:
        raise GateConfigError(f"A two-component mixture needs at least two confidence scores, got {x.size}.")
    if not np.all(np.isfinite(x)):
        raise GateConfigError("Confidence scores must be finite; drop the steps whose confidence is missing.")
    means = np.percentile(x, [25, 75]).astype(float)
    variances = np.full(2, max(float(x.var()), VARIANCE_FLOOR))
    weights = np.array([0.5, 0.5])
    for _ in range(iterations):
        log_dens = -((x[:, None] - means) ** 2) / (2 * variances) - 0.5 * np.log(2 * np.pi * variances) + np.log(weights)
        resp = np.exp(log_dens - np.logaddexp(log_dens[:, 0], log_dens[:, 1])[:, None])
        mass = resp.sum(axis=0) + 1e-12  # a component with no responsibility keeps a tiny weight
        new_means = (resp * x[:, None]).sum(axis=0) / mass
        variances = np.maximum((resp * (x[:, None] - new_means) ** 2).sum(axis=0) / mass, VARIANCE_FLOOR)
        weights = mass / mass.sum()
        converged = bool(np.max(np.abs(new_means - means)) <= tol)
        means = new_means
        if converged:
            break
    order = np.argsort(means, kind="stable")
    return Mixture(*(tuple(float(v) for v in arr[order]) for arr in (weights, means, variances)))  # type: ignore[arg-type]


def _mixture_from_dict(d: Mapping[str, Any]) -> Mixture:
    weights, means, variances = (tuple(float(v) for v in d[k]) for k in ("weights", "means", "variances"))
    if not len(weights) == len(means) == len(variances) == 2 or min(weights + variances) <= 0 or means[0] > means[1]:
        raise GateConfigError("a mixture needs two positive weights and variances, and its low mean first")
    return Mixture(weights, means, variances)  # type: ignore[arg-type]


class StepwiseGMMGate(Gate):
    """Escalate iff the low-confidence component's posterior ≥ ``threshold``.

    Build one with ``StepwiseGMMGate.fit`` from recorded scores, or ``load`` a saved one. A draft
    without the confidence feature scores 1.0 and escalates: unknown confidence is treated as low.

    Args:
        mixtures: the mixture of each step bucket (bucket = step index, the last one open-ended).
        pooled: the mixture of all steps, for buckets without a mixture of their own.
        threshold: the posterior at or above which a draft escalates, in [0, 1].
        feature: the confidence feature the mixtures were fitted on.

    Example:
        >>> import random
        >>> rng = random.Random(0)
        >>> scores = [rng.gauss(3, 1) for _ in range(50)] + [rng.gauss(10, 1) for _ in range(50)]
        >>> gate = StepwiseGMMGate.fit({0: scores})
        >>> [round(m) for m in gate.mixture_for(0).means]
        [3, 10]
    """

    name = "stepwise-gmm"
    aliases = ("steer",)
    options: ClassVar[Mapping[str, GateOption]] = {
        "path": GateOption("--steer", Path, "the fitted STEER gate's JSON file (required)"),
        "threshold": GateOption("--threshold", float, "posterior threshold in [0, 1] (default: the saved one)"),
    }

    def __init__(self, mixtures: Mapping[int, Mixture], pooled: Mixture, threshold: float = 0.5,
                 feature: str = "logit_confidence") -> None:
        if not 0.0 <= threshold <= 1.0:
            raise GateConfigError(f"The STEER threshold is a posterior probability in [0, 1], got {threshold}.")
        if feature not in CONFIDENCE_FEATURES:
            raise GateConfigError(f"feature must be one of {CONFIDENCE_FEATURES}, got {feature!r}.")
        self.mixtures, self.pooled = dict(mixtures), pooled
        self.threshold, self.feature = float(threshold), feature

    @classmethod
    def fit(cls, scores_by_step: Mapping[int, Sequence[float]], threshold: float = 0.5, feature: str = "logit_confidence",
            max_step_buckets: int = 8, min_scores: int = 20) -> StepwiseGMMGate:
        """Fit one mixture per step position from recorded confidence scores.

        Args:
            scores_by_step: step index → the draft's confidence at that step, over many answers.
                Missing (None / NaN) scores are dropped.
            threshold: the posterior threshold of the returned gate.
            feature: the confidence feature the scores are of.
            max_step_buckets: positions ≥ ``max_step_buckets − 1`` share the last bucket, since
                late positions are rare.
            min_scores: a bucket with fewer scores uses the pooled mixture.

        Raises:
            ValueError: fewer than two usable scores in all, or bad arguments.
        """
        if max_step_buckets < 1 or min_scores < 2:
            raise GateConfigError(f"Need max_step_buckets ≥ 1 and min_scores ≥ 2, got {max_step_buckets} and {min_scores}.")
        buckets: dict[int, list[float]] = {}
        for step, scores in scores_by_step.items():
            if step < 0:
                raise GateConfigError(f"Step indices start at 0, got {step}.")
            usable = [float(s) for s in scores if s is not None and math.isfinite(s)]
            buckets.setdefault(min(int(step), max_step_buckets - 1), []).extend(usable)
        everything = [s for scores in buckets.values() for s in scores]
        if len(everything) < 2:
            raise GateConfigError(f"STEER needs recorded {feature} scores to fit on, got {len(everything)}; "
                             "collect traces with a backend that reports them.")
        pooled = fit_mixture(everything)
        mixtures = {b: fit_mixture(s) if len(s) >= min_scores else pooled for b, s in sorted(buckets.items()) if s}
        return cls(mixtures, pooled, threshold, feature)

    @classmethod
    def from_options(cls, **options: Any) -> StepwiseGMMGate:
        """Load the gate saved at ``path=``, with the posterior ``threshold=`` if given.

        Raises:
            GateConfigError: no ``path``, or a bad threshold or file.
        """
        path, threshold = options.get("path"), options.get("threshold")
        if path is None:
            raise GateConfigError(f"Gate {cls.name!r} needs path= to a fitted STEER gate JSON file (CLI: --steer FILE).")
        gate = cls.load(path)
        if threshold is not None:
            gate = cls(gate.mixtures, gate.pooled, float(threshold), gate.feature)  # validates it
        return gate

    def mixture_for(self, step_index: int) -> Mixture:
        """The mixture of a step position: its bucket's, the last bucket's past it, else the pooled one."""
        if not self.mixtures:
            return self.pooled
        return self.mixtures.get(min(max(step_index, 0), max(self.mixtures)), self.pooled)

    def score(self, x: GateInput) -> float:
        confidence = confidence_of(x, self.feature)
        if confidence is None:
            return 1.0  # unknown confidence is treated as low
        step = x.observation.get("step_index")
        step_index = 0 if step is None or not math.isfinite(step) else int(step)
        return self.mixture_for(step_index).low_posterior(confidence)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "threshold": self.threshold, "feature": self.feature,
                "pooled": asdict(self.pooled), "mixtures": {str(k): asdict(m) for k, m in sorted(self.mixtures.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepwiseGMMGate:
        """Rebuild a gate from ``to_dict``'s output.

        Raises:
            ValueError: not a STEER gate of this version, or incomplete.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            found = (data.get("format"), data.get("version")) if isinstance(data, Mapping) else type(data).__name__
            raise GateConfigError(f"Not a {FORMAT} v{FORMAT_VERSION} gate (found {found!r}); "
                             "fit one with StepwiseGMMGate.fit(...).save(path).")
        try:
            return cls({int(k): _mixture_from_dict(m) for k, m in data["mixtures"].items()},
                       _mixture_from_dict(data["pooled"]), float(data["threshold"]), str(data["feature"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise GateConfigError(f"The {FORMAT} gate data is incomplete or corrupted ({exc}); refit and save it again.") from exc

    def save(self, path: str | Path) -> Path:
        """Write the gate as JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> StepwiseGMMGate:
        """Read a gate written by ``save``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not valid JSON or not a STEER gate.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise GateConfigError(f"{path} is not valid JSON ({exc}); refit and save the STEER gate again.") from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise GateConfigError(f"{path}: {exc}") from exc
