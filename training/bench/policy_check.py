"""Check a policy against exactly tuned single-feature thresholds, live on problems no tuning saw.

    python -m stepgraph.training.bench.policy_check --store runs/v2.sqlite --policy runs/policy_full runs/policy_free \
        --problems 400 --seed 11 [--shifted]

Each threshold ("escalate iff feature < t") is tuned on the store's calibration split at every
breakpoint of its scores (each value at which a decision changes): the cheapest whose
local-verification misses meet the split-conformal bound at α. Then every gate, target-only and
draft-only run live on the same test-split problems and seeds (``evaluate_gates``). ``--shifted``
draws problems with four operations (``task.Difficulty(min_ops=4, max_ops=4)``), a distribution
none of the traces hold.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

from stepgraph.training.calibration.calibrate import Family, Replay
from stepgraph.training.collection.collect import Item
from stepgraph.training.collection.evaluate import evaluate_gates
from stepgraph.training.data.store import TraceStore

from stepgraph.models.base import DEFAULT_TEMPERATURE
from stepgraph.routing.gates import PolicyGate
from stepgraph.routing.gates.base import Gate, GateDecision, GateInput
from stepgraph.testbed import load_pair, task

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, type=Path, help="trace store whose calibration split tunes the thresholds")
    parser.add_argument("--policy", nargs="+", type=Path, default=[], help="policy artifact directories")
    parser.add_argument("--problems", type=int, default=400)
    parser.add_argument("--seed", type=int, default=11, help="problem and sampling seed (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.02)
    parser.add_argument("--thresholds", nargs="*", default=list(THRESHOLD_FEATURES), help="features to tune thresholds on")
    parser.add_argument("--shifted", action="store_true", help="four-operation problems")
    parser.add_argument("--out", type=Path, default=None, help="write the report here as JSON")
    args = parser.parse_args(argv)
    with TraceStore(args.store, readonly=True) as store:
        calibration = list(store.episodes("calibration"))
    gates: dict[str, Gate] = {}
    tuned = {}
    for feature in args.thresholds:
        tuned[feature] = tune_threshold(feature, calibration, args.alpha)
        gates[f"threshold:{feature}"] = FeatureThresholdGate(feature, tuned[feature]["threshold"])
    for path in args.policy:
        gates[str(path)] = PolicyGate.from_path(path)
    difficulty = task.Difficulty(min_ops=4, max_ops=4) if args.shifted else task.Difficulty()
    problems = task.generate("test", args.problems, seed=args.seed, difficulty=difficulty)
    items = [Item(f"test:{args.seed}:{i}", p.question, str(p.answer)) for i, p in enumerate(problems)]
    report = {"tuned_thresholds": tuned, "shifted": args.shifted, "problems": len(items), "seed": args.seed,
              "gates": evaluate_gates(load_pair(), gates, items, seed=args.seed, temperature=DEFAULT_TEMPERATURE, progress=False,
                                      journal_dir=args.out.with_suffix(".journal") if args.out else None)}
    target = report["gates"]["target"]
    for row in report["gates"].values():  # total FLOPs with prefill, against target-only's
        row["total_flops_vs_target"] = round((row["mean_flops"] + row["mean_prefill_flops"]) /
                                             (target["mean_flops"] + target["mean_prefill_flops"]), 4)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
