"""Check a policy against exactly tuned single-feature thresholds, live on problems no tuning saw.

    stepgraph policy-check --store runs/v2.sqlite --policy runs/policy_full runs/policy_free \
        --problems 400 --seed 11 [--shifted]

Each threshold ("escalate iff feature < t") is tuned on the store's calibration split at every
breakpoint of its scores (each value at which a decision changes): the cheapest whose
local-verification misses meet the split-conformal bound at α. Then every gate, target-only and
draft-only run live on the same test-split problems and seeds (``evaluate_gates``). ``--shifted``
draws problems with four operations (``task.Difficulty(min_ops=4, max_ops=4)``), a distribution
none of the traces hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stepgraph.training.calibration.calibrate import Family, Replay
from stepgraph.training.collection.collect import Item
from stepgraph.training.collection.evaluate import evaluate_gates
from stepgraph.training.data.store import TraceStore

from stepgraph.errors import ConfigError
from stepgraph.models.base import DEFAULT_TEMPERATURE
from stepgraph.routing.gates import PolicyGate
from stepgraph.routing.gates.base import Gate, GateDecision, GateInput
from stepgraph.testbed import load_pair, task, testbed_task

THRESHOLD_FEATURES = ("api_confidence", "sampled_logprob_min", "sampled_logprob_sum")


class FeatureThresholdGate(Gate):
    """Escalates iff ``feature`` is below ``cutoff`` (or unknown): a single-feature baseline."""

    def __init__(self, feature: str, cutoff: float) -> None:
        self.name, self.feature, self.cutoff = f"threshold:{feature}", feature, cutoff

    def score(self, x: GateInput) -> float:
        value = x.observation.get(self.feature)
        return math.inf if value is None else -float(value)

    def decide_on_score(self, x: GateInput, score: float) -> GateDecision:
        escalate = -score < self.cutoff
        return GateDecision(escalate, score, float(escalate))


def tune_threshold(feature: str, calibration: Sequence, alpha: float) -> dict:
    """The cheapest cut-off over every breakpoint whose calibration misses meet the bound."""
    def value(x: GateInput) -> float | None:
        v = x.observation.get(feature)
        return None if v is None or math.isnan(v) else float(v)

    family = Family(feature, value, lambda s, t: s is None or s < t, lambda t: FeatureThresholdGate(feature, t),
                    lambda scores: [*sorted(set(scores)), max(scores, default=0.0) + 1.0])
    return Replay(family, calibration, max_candidates=10**7).calibrate(alpha).as_dict()


def policy_check(store: str | Path, policies: Sequence[Path] = (), *, problems: int = 400, seed: int = 11,
                 alpha: float = 0.02, thresholds: Sequence[str] = THRESHOLD_FEATURES, shifted: bool = False,
                 out: Path | None = None) -> dict[str, Any]:
    """Tune each feature in ``thresholds`` on ``store``'s calibration split, then run those gates, the ``policies``,
    target-only and draft-only live on ``problems`` test problems; the report, also written to ``out`` as JSON."""
    with TraceStore(store, readonly=True) as traces:
        calibration = list(traces.episodes("calibration"))
    gates: dict[str, Gate] = {}
    tuned = {}
    for feature in thresholds:
        tuned[feature] = tune_threshold(feature, calibration, alpha)
        gates[f"threshold:{feature}"] = FeatureThresholdGate(feature, tuned[feature]["threshold"])
    for path in policies:
        gates[str(path)] = PolicyGate.from_path(path)
    if shifted and testbed_task() is not task:
        raise ConfigError("policy-check --shifted draws task v1's four-operation problems; the shipped tiers are on another task.")
    generated = (task.generate("test", problems, seed=seed, difficulty=task.Difficulty(min_ops=4, max_ops=4)) if shifted
                 else testbed_task().generate("test", problems, seed=seed))
    items = [Item(f"test:{seed}:{i}", p.question, str(p.answer)) for i, p in enumerate(generated)]
    report = {"tuned_thresholds": tuned, "shifted": shifted, "problems": len(items), "seed": seed,
              "gates": evaluate_gates(load_pair(), gates, items, seed=seed, temperature=DEFAULT_TEMPERATURE, progress=False,
                                      journal_dir=out.with_suffix(".journal") if out else None)}
    target = report["gates"]["target"]
    for row in report["gates"].values():  # total FLOPs with prefill, against target-only's
        row["total_flops_vs_target"] = round((row["mean_flops"] + row["mean_prefill_flops"]) /
                                             (target["mean_flops"] + target["mean_prefill_flops"]), 4)
    if out:
        out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":  # the old path of `stepgraph policy-check`
    from stepgraph.cli import run_old_path
    run_old_path(__spec__.name, "policy-check")
