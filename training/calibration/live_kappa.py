"""κ of a policy (2-tier or K-tier) calibrated on live runs of calibration problems: ``stepgraph calibrate --runs N``.

Replayed traces only approximate what follows a choice the behaviour gate did not make (later
steps' features, the texts they continue); runs see it. Each calibration problem is swept over
every κ (``tuning.sweep``: one run per piece of the κ axis), the strongest tier alone answers it
once with the same seed (coverage is measured against it), and ``tuning.calibrate_on_runs``
picks κ by split conformal from the safe side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from stepgraph.training.bench.bench import GRID, with_threshold
from stepgraph.training.calibration.guarantee import episodes_needed
from stepgraph.training.calibration.tuning import Tunable, calibrate_on_runs, sweep
from stepgraph.training.collection.collect import Item
from stepgraph.training.collection.runs import run_gate, strongest_alone

from stepgraph.context import RouterContext
from stepgraph.models.base import StepModel
from stepgraph.models.costs import Prices
from stepgraph.routing.gates import PolicyGate


def kappa_tunable(gate: PolicyGate) -> Tunable:
    """A policy gate (2-tier or K-tier; it escalates iff score ≥ κ) with κ as the swept threshold.

    Every decision's score is a critical value, also the second decision on a step sent to the mid tier.
    """
    return Tunable(lambda t: with_threshold(gate, t), None, start=gate.threshold, grid=GRID, scale=1e-300)


def calibrate_kappa(tiers: Sequence[StepModel], gate: PolicyGate, items: Sequence[Item], *, alphas: Sequence[float], seed: int,
                    context: RouterContext | None = None, prices: Sequence[Prices] | None = None, concurrency: int = 1,
                    progress: bool = True, targets: Sequence[Mapping[str, Any]] | None = None,
                    delta: float | None = None) -> dict[float, dict[str, Any]]:
    """Sweep ``items`` once, then ``calibrate_on_runs`` at each α (a dict with ``target_flops`` added to each calibration
    point); ``delta``: the PAC bound instead of split conformal (``guarantee.allowed_misses``).

    Runs use the seeds of ``runs.run_gate`` (base ``seed``), so the strongest tier alone and the
    router answer each problem with the same seed. ``targets``: the strongest tier's rows on
    ``items`` at that seed, when already run (else they are run here).
    """
    if targets is None:
        alone_tiers, alone_gate, alone_prices = strongest_alone(tiers, prices)
        targets = run_gate(alone_tiers, alone_gate, items, seed=seed, context=context, prices=alone_prices, concurrency=concurrency,
                           desc="strongest tier alone", progress=progress)
    pieces = sweep(tiers, kappa_tunable(gate), items, targets, seed=seed, context=context, prices=prices, concurrency=concurrency,
                   desc="sweep κ", progress=progress)
    target_flops = sum(r["flops"] for r in targets) / len(targets)
    out = {}
    for alpha in alphas:
        calibrated = calibrate_on_runs(pieces, alpha, delta)
        calibrated["calibration"]["target_flops"] = target_flops
        out[alpha] = calibrated
    return out


def with_live_kappa(artifact: Any, calibrated: Mapping[str, Any], alpha: float) -> Any:
    """A copy of a policy artifact with κ from runs (the log-odds its scores are), its α and guarantee;
    the κ it had is kept in its training record."""
    kappa = calibrated["threshold"]
    before = artifact.training.get("kappa_from_traces", artifact.kappa)
    return dataclasses.replace(artifact, kappa=kappa, alpha=alpha, guarantee=dict(calibrated["guarantee"]), training={
        **artifact.training, "kappa_from_traces": before, "kappa_from": "calibration runs",
        "calibration_runs": dict(calibrated["calibration"])})


def curve_rows(calibrated: Mapping[float, Mapping[str, Any]], delta: float | None = None) -> list[dict[str, Any]]:
    """α → (κ, coverage, FLOPs vs the strongest tier alone, escalation rate) on the runs, as ``stepgraph.cli.training.curve_table`` prints."""
    rows = []
    for alpha, c in sorted(calibrated.items()):
        point = c["calibration"]
        if point["problems"] < episodes_needed(alpha, delta):
            rows.append({"alpha": alpha, "needs_episodes": episodes_needed(alpha, delta)})
            continue
        rows.append({"alpha": alpha, "threshold": c["threshold"], "coverage": point["covered"],
                     "flops_vs_target": point["flops"] / point["target_flops"] if point["target_flops"] else float("nan"),
                     "escalation_rate": point["escalation_rate"], "met": c["guarantee"]["type"] != "none"})
    return rows
