"""STEER's gate: per step position, a two-component Gaussian mixture over confidence scores.

STEER (confidence-guided stepwise routing) models the draft's confidence at each step position
as a mixture of a low-confidence and a high-confidence component, fitted without labels on
recorded scores. A draft escalates when the posterior of the low component, given its score,
reaches the threshold. Positions past the last fitted bucket use the last bucket; a bucket with
too few scores falls back to the mixture fitted on all positions pooled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from stepgraph.gates.base import Gate, GateInput

VARIANCE_FLOOR = 1e-4


@dataclass(frozen=True)
class Mixture:
    """A 1-D two-component Gaussian mixture; component 0 has the lower mean."""

    weights: tuple[float, float]
    means: tuple[float, float]
    variances: tuple[float, float]

    def low_posterior(self, x: float) -> float:
        dens = [w * math.exp(-((x - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v)
                for w, m, v in zip(self.weights, self.means, self.variances)]
        total = dens[0] + dens[1]
        if total == 0.0:  # far outside both components: nearer the low mean means low
            return float(abs(x - self.means[0]) <= abs(x - self.means[1]))
        return dens[0] / total


def fit_mixture(scores: Sequence[float], iterations: int = 200) -> Mixture:
    """Fit by EM from a deterministic start (the 25th and 75th percentiles)."""
    x = np.asarray(scores, dtype=float)
    if x.size < 2:
        raise ValueError("A mixture needs at least two scores.")
    means = np.percentile(x, [25, 75]).astype(float)
    variances = np.full(2, max(float(x.var()), VARIANCE_FLOOR))
    weights = np.array([0.5, 0.5])
    for _ in range(iterations):
        log_dens = -((x[:, None] - means) ** 2) / (2 * variances) - 0.5 * np.log(2 * np.pi * variances) + np.log(weights)
        log_norm = np.logaddexp(log_dens[:, 0], log_dens[:, 1])
        resp = np.exp(log_dens - log_norm[:, None])
        mass = resp.sum(axis=0) + 1e-12
        new_means = (resp * x[:, None]).sum(axis=0) / mass
        variances = np.maximum((resp * (x[:, None] - new_means) ** 2).sum(axis=0) / mass, VARIANCE_FLOOR)
        weights = mass / mass.sum()
        converged = np.allclose(new_means, means, atol=1e-8)
        means = new_means
        if converged:
            break
    order = np.argsort(means)
    return Mixture(*(tuple(float(v) for v in arr[order]) for arr in (weights, means, variances)))  # type: ignore[arg-type]


class StepwiseGMMGate(Gate):
    """Escalate iff the low-confidence component's posterior ≥ ``threshold``.

    Build one with ``StepwiseGMMGate.fit`` from recorded scores, or ``load`` a saved one.
    """

    name = "steer"

    def __init__(self, mixtures: Mapping[int, Mixture], pooled: Mixture, threshold: float = 0.5,
                 feature: str = "logit_confidence") -> None:
        self.mixtures, self.pooled = dict(mixtures), pooled
        self.threshold, self.feature = threshold, feature

    @classmethod
    def fit(cls, scores_by_step: Mapping[int, Sequence[float]], threshold: float = 0.5, feature: str = "logit_confidence",
            max_step_buckets: int = 8, min_scores: int = 20) -> StepwiseGMMGate:
        """Fit one mixture per step position (positions ≥ max_step_buckets − 1 share the last)."""
        buckets: dict[int, list[float]] = {}
        for step, scores in scores_by_step.items():
            buckets.setdefault(min(step, max_step_buckets - 1), []).extend(scores)
        pooled = fit_mixture([s for scores in buckets.values() for s in scores])
        mixtures = {b: fit_mixture(s) if len(s) >= min_scores else pooled for b, s in buckets.items()}
        return cls(mixtures, pooled, threshold, feature)

    def mixture_for(self, step_index: int) -> Mixture:
        if not self.mixtures:
            return self.pooled
        return self.mixtures.get(min(step_index, max(self.mixtures)), self.pooled)

    def score(self, x: GateInput) -> float:
        confidence = x.observation.get(self.feature)
        if confidence is None:
            return 1.0  # unknown confidence is treated as low
        return self.mixture_for(int(x.observation.get("step_index") or 0)).low_posterior(float(confidence))

    def to_dict(self) -> dict:
        return {"format": "stepgraph.steer", "version": 1, "threshold": self.threshold, "feature": self.feature,
                "pooled": asdict(self.pooled), "mixtures": {str(k): asdict(m) for k, m in self.mixtures.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> StepwiseGMMGate:
        def mixture(d: Mapping) -> Mixture:
            return Mixture(tuple(d["weights"]), tuple(d["means"]), tuple(d["variances"]))  # type: ignore[arg-type]

        if data.get("format") != "stepgraph.steer":
            raise ValueError("Not a stepgraph STEER gate file (format must be 'stepgraph.steer').")
        return cls({int(k): mixture(m) for k, m in data["mixtures"].items()}, mixture(data["pooled"]),
                   float(data["threshold"]), data["feature"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> StepwiseGMMGate:
        return cls.from_dict(json.loads(Path(path).read_text()))
