"""Calibrate any score-based gate on held-out traces, and load calibrated gates over checked tiers.

``stepgraph calibrate`` sets the threshold of a gate whose decision is a score compared with a
threshold — the CPO policy's κ, the confidence threshold, STEER's posterior threshold — so that
the calibration split's coverage meets 1 − α, and writes a gate artifact (with the out-of-domain
threshold, ``training.calibration.domain``: one scoring call per calibration question, the only
model calls). κ needs none: it replays the stored calibration episodes (collected like the train split, with both
per-step verdicts known) with the local-verification surrogate of CPO's κ update. An episode is
a miss unless the strongest tier alone was wrong, or the gate repeats the recorded actions on a
right answer, or every step it keeps is verified; with n episodes a threshold is accepted when
misses ≤ ⌊α(n + 1)⌋ − 1 (split conformal's finite-sample correction), the cheapest such one
chosen. The guarantee assumes the calibration and deployment questions are exchangeable (drawn
from the same distribution), and it holds for the surrogate, which the verifier's errors bound.

A re-calibration of a policy for a new α keeps its weights and changes only κ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepgraph.training.collection.prm import StepRewardModel
from stepgraph.training.data.records import Episode

from stepgraph.artifacts.tiers import check_tiers, describe
from stepgraph.domain import Domain
from stepgraph.errors import ConfigError
from stepgraph.models.base import StepOutput
from stepgraph.routing.gates import (
    ConfidenceThresholdGate,
    PolicyGate,
    StepwiseGMMGate,
)
from stepgraph.routing.gates.base import Gate, GateInput
from stepgraph.routing.gates.calibrated import GATE_FILE, GATE_FORMAT, GATE_FORMAT_VERSION, PRM_FILE, load_gate_artifact
from stepgraph.routing.gates.judges import ProcessRewardGate

# The gate-directory reader and the tier checks are the runtime's (stepgraph.routing.gates.calibrated, stepgraph.artifacts.tiers);
# they stay importable from here, their former home.
__all__ = ["CALIBRATED", "CURVE_ALPHAS", "GATE_FILE", "GATE_FORMAT", "GATE_FORMAT_VERSION", "PRM_FILE", "Calibration", "Family", "Replay", "check_tiers", "describe", "episode_cost", "episode_miss", "fit_steer", "load_gate_artifact", "min_episodes", "policy_family", "prm_family", "replay_inputs", "save_gate", "steer_family", "threshold_family", "too_few_message"]

CURVE_ALPHAS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
CALIBRATED = ("policy", "threshold", "steer", "prm")


def min_episodes(alpha: float) -> int:
    """The fewest calibration episodes for which α can be certified: ⌊α(n + 1)⌋ ≥ 1."""
    return max(1, math.ceil(1.0 / alpha - 1e-9) - 1)


def too_few_message(n: int, alpha: float, what: str = "calibration") -> str:
    return (f"{n} {what} episodes cannot certify α = {alpha}: with n episodes a miss rate ≤ α is certified only when "
            f"⌊α(n + 1)⌋ ≥ 1, i.e. n ≥ {min_episodes(alpha)}. Collect more (`stepgraph collect --split calibration`) "
            f"or raise α (with {n} episodes the smallest is {1.0 / (n + 1):.3g}).")


# --- replay ---------------------------------------------------------------------------------------


def replay_inputs(episode: Episode) -> list[GateInput]:
    """What the gate saw at each recorded step: the observation and the accepted steps before it."""
    inputs: list[GateInput] = []
    prior: list[str] = []
    for step in episode.steps:
        draft = StepOutput(step.draft, [], None, [], 0, 0, 0, False, "")
        inputs.append(GateInput(episode.question, tuple(prior), draft, step.observation, 0))
        prior.append(step.escalated if step.action and step.escalated is not None else step.draft)
    return inputs


def episode_miss(episode: Episode, choice: Sequence[int]) -> bool:
    """CPO's local-verification surrogate of a miss (``cpo.episode_miss``) on one stored episode."""
    if episode.target_reward == 0:
        return False
    actions = [s.action for s in episode.steps]
    if list(choice) == actions and episode.reward == 1:
        return False
    for step, c in zip(episode.steps, choice):
        if (step.escalated_correct if c else step.draft_correct) is not True:
            return True
        kept_by_behaviour = step.escalated_correct if step.action else step.draft_correct
        if c != step.action and kept_by_behaviour is not True:
            return False  # Γ left the recorded trajectory on a right step: the rest is not Γ's
    return False


def episode_cost(episode: Episode, choice: Sequence[int]) -> float:
    """Replay FLOPs: every draft, plus the escalation where the gate escalates."""
    return sum(s.draft_flops + (c * (s.escalate_flops or 0.0)) for s, c in zip(episode.steps, choice))


@dataclass
class Family:
    """A gate whose decision is ``escalates(score, t)`` for a threshold t.

    ``ordered`` lists the candidate thresholds cheapest first, from one that escalates nothing
    (above every score) to one that escalates everything (the safe side when none meets α).
    """

    name: str
    score: Callable[[GateInput], float | None]
    escalates: Callable[[float | None, float], bool]
    make: Callable[[float], Gate]
    ordered: Callable[[list[float]], list[float]]  # the candidate thresholds, fewest escalations first


def policy_family(gate: PolicyGate) -> Family:
    return Family("policy", gate.score, lambda s, t: s is not None and s >= t,
                  lambda t: _policy_with_kappa(gate, t), _kappa_candidates)


def _kappa_candidates(scores: list[float]) -> list[float]:
    """Every score (a log-odds) as a κ, between one above them all (escalates nothing) and one at or below them all."""
    ends = {math.floor(max(scores, default=0.0)) + 1.0, math.floor(min(scores, default=0.0))}
    return sorted(set(scores) | ends, reverse=True)


def _policy_with_kappa(gate: PolicyGate, kappa: float) -> PolicyGate:
    return PolicyGate(dataclasses.replace(gate.artifact, kappa=kappa))  # same weights, new κ


def threshold_family(feature: str) -> Family:
    from stepgraph.routing.gates.simple import confidence_of

    # unknown confidence escalates (as the gate does); the cheapest cut-off is the lowest confidence
    return Family("threshold", lambda x: confidence_of(x, feature), lambda s, t: s is None or s < t,
                  lambda t: ConfidenceThresholdGate(t, feature), lambda scores: [*sorted(set(scores)), max(scores, default=0.0) + 1.0])


def steer_family(gate: StepwiseGMMGate) -> Family:
    return Family("steer", gate.score, lambda s, t: s is not None and s >= t,
                  lambda t: StepwiseGMMGate(gate.mixtures, gate.pooled, min(1.0, t), gate.feature),
                  lambda scores: sorted(set(scores) | {0.0, 1.0}, reverse=True))


def prm_family(prm: StepRewardModel) -> Family:
    """RSD: escalate a draft whose predicted reward is below the threshold; the cheapest cut-off is the lowest reward."""
    return Family("prm", prm, lambda s, t: s is None or s < t, lambda t: ProcessRewardGate(prm, t),
                  lambda scores: [*sorted(set(scores)), 1.0 + 1e-9])


def fit_steer(train: Sequence[Episode], feature: str = "logit_confidence") -> StepwiseGMMGate:
    scores: dict[int, list[float]] = {}
    for episode in train:
        for step in episode.steps:
            value = step.observation.get(feature)
            if value is not None and math.isfinite(value):
                scores.setdefault(step.index, []).append(value)
    if not scores:
        raise ConfigError(f"STEER needs {feature} in the train traces; the draft tier did not report it.")
    return StepwiseGMMGate.fit(scores, feature=feature)


@dataclass
class Calibration:
    threshold: float
    alpha: float
    episodes: int
    misses: int
    allowed: int
    coverage: float
    mean_flops: float
    flops_vs_target: float
    escalation_rate: float

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Replay:
    """Stored calibration episodes with a family's scores computed once."""

    def __init__(self, family: Family, episodes: Sequence[Episode], max_candidates: int = 400) -> None:
        self.family, self.episodes = family, [e for e in episodes if e.steps]
        if not self.episodes:
            raise ConfigError("No calibration episodes with steps; run `stepgraph collect --split calibration` first.")
        self.scores = [[family.score(x) for x in replay_inputs(e)] for e in self.episodes]
        finite = [s for row in self.scores for s in row if s is not None and math.isfinite(s)]
        candidates = family.ordered(finite)
        if len(candidates) > max_candidates:  # evenly spaced in rank, ends kept
            step = (len(candidates) - 1) / (max_candidates - 1)
            candidates = [candidates[round(i * step)] for i in range(max_candidates)]
        self.candidates = candidates
        self.target_flops = sum(e.target_flops for e in self.episodes) / len(self.episodes)

    def evaluate(self, threshold: float, alpha: float) -> Calibration:
        choices = [[int(self.family.escalates(s, threshold)) for s in row] for row in self.scores]
        n = len(self.episodes)
        misses = sum(episode_miss(e, c) for e, c in zip(self.episodes, choices))
        flops = sum(episode_cost(e, c) for e, c in zip(self.episodes, choices)) / n
        steps = sum(len(c) for c in choices)
        return Calibration(threshold, alpha, n, misses, math.floor(alpha * (n + 1)) - 1, round(1 - misses / n, 4), flops,
                           round(flops / self.target_flops, 4) if self.target_flops else float("nan"),
                           round(sum(map(sum, choices)) / max(1, steps), 4))

    def calibrate(self, alpha: float) -> Calibration:
        """The cheapest threshold whose misses meet the conformal bound.

        Raises:
            ConfigError: too few episodes to certify α (the message says how many are needed).
        """
        n = len(self.episodes)
        if math.floor(alpha * (n + 1)) - 1 < 0:
            raise ConfigError(too_few_message(n, alpha))
        for threshold in self.candidates:
            result = self.evaluate(threshold, alpha)
            if result.misses <= result.allowed:
                return result
        return self.evaluate(self.candidates[-1], alpha)  # the most escalating candidate; reported as not met

    def curve(self, alphas: Sequence[float] = CURVE_ALPHAS) -> list[dict[str, Any]]:
        """α → (threshold, surrogate coverage, cost) on the calibration episodes, or how many episodes α needs."""
        rows = []
        for alpha in sorted(set(alphas)):
            try:
                c = self.calibrate(alpha)
            except ConfigError:
                rows.append({"alpha": alpha, "needs_episodes": min_episodes(alpha)})
                continue
            rows.append({"alpha": alpha, "threshold": c.threshold, "coverage": c.coverage, "flops_vs_target": c.flops_vs_target,
                         "escalation_rate": c.escalation_rate, "met": c.misses <= c.allowed})
        return rows


# --- gate artifacts and the tier check -----------------------------------------------------------


def save_gate(out: Path, family: str, options: Mapping[str, Any], *, tiers: Sequence[Mapping[str, Any]],
              calibration: Mapping[str, Any], domain: Domain | None = None) -> Path:
    """Write ``gate.json``; ``domain`` (the out-of-domain threshold, ``stepgraph.domain``) only where there is one."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": GATE_FORMAT, "format_version": GATE_FORMAT_VERSION, "gate": family, "options": dict(options),
                "tiers": list(tiers), "calibration": dict(calibration), **({} if domain is None else {"domain": domain.model_dump()})}
    (out / GATE_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def load_gate(spec: Any, tiers: Sequence[Any] | None = None) -> Gate:
    """Deprecated: the run spec builds its own gate, ``spec.build_gate(tiers)``."""
    warnings.warn("stepgraph.training.calibrate.load_gate(spec, tiers) is deprecated; call spec.build_gate(tiers).",
                  DeprecationWarning, stacklevel=2)
    return spec.build_gate(tiers)  # type: ignore[no-any-return]
