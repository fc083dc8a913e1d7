"""Every routing method side by side on the same problems, seeds and graph: ``stepgraph bench``.

Methods (all gates in the same graph): draft-only, target-only, random (escalation rate matched
to the CPO policy's), confidence thresholds (API confidence and the max-logit confidence), STEER
(stepwise GMM fitted on the train traces), RSD (a reward model trained on the train traces' step
verdicts), SpecReason (the target's likelihood of the draft step), the CPO policy, the two-feature hand rule
(escalate iff ``arithmetic_error`` or ``ungrounded_operands``: ``FeatureRuleGate``) with the policy's κ
re-tuned to the rule's calibration coverage beside it, the same rule with a confidence threshold (tuned
like the thresholds: the rule alone cannot reach a coverage goal), and the oracle (escalate exactly the drafts the
exact verifier rejects). SpecReason's judging passes are counted
in its FLOPs (2·N of the target per draft token scored).

Every score-based method (the policy's κ too) is tuned on the calibration split only, three ways:
the paper's rule (the cheapest threshold of the grid 0.0, 0.1, ..., 1.0 — for a raw-logit
confidence the deciles of the train traces' confidences — whose relative coverage is ≥ 1 − α);
the same rule over its exact breakpoints (every threshold at which a calibration decision changes,
``tuning``); and the cheapest breakpoint whose calibration coverage reaches the policy's
(matched coverage). Every row is compared with the policy on the same problems and seeds
(``compare``: paired bootstrap interval of the FLOPs difference, McNemar on misses).
Every metric is a mean over problems (and seeds) with a bootstrap 95% interval over problems.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stepgraph.training.bench.compare import compare
from stepgraph.training.calibration.tuning import (
    Tunable,
    breakpoint_thresholds,
    cheapest,
    cheapest_rows,
    critical_below,
    critical_feature,
    critical_of_score,
    critical_unless_rule,
    evaluate,
    sweep,
)
from stepgraph.training.collection.collect import Item
from stepgraph.training.collection.prm import StepRewardModel
from stepgraph.training.collection.runs import add_coverage, run_gate, strongest_alone
from stepgraph.training.data.records import Episode
from tqdm import tqdm

from stepgraph.context import RouterContext
from stepgraph.models.base import DEFAULT_TEMPERATURE, StepModel
from stepgraph.models.costs import Prices
from stepgraph.routing.gates import (
    AlwaysDraftGate,
    ConfidenceThresholdGate,
    FeatureRuleGate,
    PolicyGate,
    RandomGate,
    StepwiseGMMGate,
)
from stepgraph.routing.gates.base import Gate
from stepgraph.routing.gates.judges import JudgeGate, OracleGate, ProcessRewardGate
from stepgraph.routing.gates.simple import CONFIDENCE_FEATURES

GRID = [round(0.1 * i, 1) for i in range(11)]
METRICS = ("correct", "covered", "flops", "prefill_flops", "usd", "escalation_rate", "seconds")


def run_rows(tiers: Sequence[StepModel], gate: Gate, items: Sequence[Item], *, seed: int, prices: Sequence[Prices] | None,
             temperature: float = DEFAULT_TEMPERATURE, context: RouterContext | None = None, concurrency: int = 1) -> list[dict[str, Any]]:
    """One row per problem (``runs.run_gate``) without a progress bar of its own: the bench shows its own."""
    return run_gate(tiers, gate, items, seed=seed, context=context or RouterContext(temperature=temperature), prices=prices,
                    concurrency=concurrency, progress=False)


def bootstrap(values: Sequence[float], n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a percentile bootstrap 95% interval."""
    data = np.asarray(values, dtype=float)
    means = np.sort(data[np.random.default_rng(seed).integers(0, len(data), size=(n_resamples, len(data)))].mean(axis=1))
    return float(data.mean()), float(means[int(0.025 * n_resamples)]), float(means[int(0.975 * n_resamples) - 1])


def paired_difference(rows: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], metric: str = "flops") -> dict[str, float]:
    """Mean of ``metric`` minus the baseline's on the same problem and seed, with a bootstrap 95% interval."""
    mean, low, high = bootstrap([float(a[metric]) - float(b[metric]) for a, b in zip(rows, baseline, strict=True)])
    return {"mean": mean, "low": low, "high": high}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-metric mean and 95% interval, plus A/C (accuracy per mean MFLOPs)."""
    summary: dict[str, Any] = {}
    for metric in METRICS:
        mean, low, high = bootstrap([float(r[metric]) for r in rows])
        summary[metric] = {"mean": mean, "low": low, "high": high}
    flops = summary["flops"]["mean"]
    summary["a_over_c_per_mflop"] = summary["correct"]["mean"] / (flops / 1e6) if flops else float("nan")
    return summary


def tunables(tiers: Sequence[StepModel], train_episodes: Sequence[Episode], policy: Gate,
             threshold_feature: str) -> dict[str, Tunable]:
    """The score-based methods the bench tunes, each a family of gates indexed by its threshold.

    A method whose input the run does not give is left out: a confidence feature the train traces
    never hold, STEER without logit confidences, SpecReason without a target that scores steps, the
    policy's κ when the policy gate does not compare a score with its threshold.
    """
    scores_by_step: dict[int, list[float]] = {}
    seen: set[str] = set()
    for episode in train_episodes:
        for step in episode.steps:
            seen |= {name for name in CONFIDENCE_FEATURES if step.observation.get(name) is not None}
            confidence = step.observation.get("logit_confidence")
            if confidence is not None:
                scores_by_step.setdefault(step.index, []).append(confidence)
    methods: dict[str, Tunable] = {}
    other = next(f for f in CONFIDENCE_FEATURES if f != threshold_feature)
    for name, feature in (("threshold", threshold_feature), ("threshold-alt", other)):
        if feature in seen:
            methods[name] = Tunable(lambda t, f=feature: ConfidenceThresholdGate(t, feature=f), critical_feature(feature),
                                    start=0.5, grid=GRID)
    if "logit_confidence" in seen and "logit_confidence" in {threshold_feature, other}:
        # Raw logits are not in [0, 1]: their grid is the train traces' deciles, their sweep starts at the median.
        logits = sorted(v for values in scores_by_step.values() for v in values)
        deciles = sorted({round(logits[min(len(logits) - 1, int(q * len(logits)))], 3) for q in GRID})
        name = "threshold" if threshold_feature == "logit_confidence" else "threshold-alt"
        methods[name] = Tunable(methods[name].make, methods[name].critical, start=logits[len(logits) // 2], grid=deciles)
    if "threshold" in methods:  # the hand rule alone has one operating point; with a threshold it can reach the goal
        base = methods["threshold"]
        methods["rule-threshold"] = Tunable(
            lambda t: FeatureRuleGate(confidence_threshold=t, confidence_feature=threshold_feature),
            critical_unless_rule(FeatureRuleGate(confidence_feature=threshold_feature)), start=base.start, grid=base.grid)
    if scores_by_step:
        steer = StepwiseGMMGate.fit(scores_by_step)
        methods["steer"] = Tunable(lambda t: with_threshold(steer, t), critical_of_score, start=0.5, grid=GRID, scale=1e-300)
    prm = StepRewardModel().fit(train_episodes)
    methods["rsd"] = Tunable(lambda t: ProcessRewardGate(prm, t), critical_below, start=0.5, grid=GRID)
    target = tiers[-1]
    if hasattr(target, "step_logprobs"):
        methods["specreason"] = Tunable(lambda t: JudgeGate(target, t), critical_below, start=0.5, grid=GRID)  # type: ignore[arg-type]
    # A score-vs-threshold gate (the policy gate too: its escalation tier does not change whether it escalates).
    if (type(policy).decide_on_score is Gate.decide_on_score or isinstance(policy, PolicyGate)) and math.isfinite(policy.threshold):
        methods["policy"] = Tunable(lambda t: with_threshold(policy, t), critical_of_score, start=policy.threshold, grid=GRID,
                                    scale=1e-300)
    return methods


def with_threshold(gate: Gate, threshold: float) -> Gate:
    """A copy of a score-vs-threshold gate at another threshold (outside its documented range too: the sweep probes there)."""
    other = copy.copy(gate)
    other.threshold = threshold
    return other


def tune(tunable: Tunable, tiers: Sequence[StepModel], calibration: Sequence[Item], target_rows: Sequence[Mapping[str, Any]],
         *, alpha: float, matched_coverage: float | None, seed: int, prices: Sequence[Prices] | None,
         context: RouterContext | None, concurrency: int = 1, desc: str = "", progress: bool = False) -> dict[str, Any]:
    """Sweep one method on the calibration problems and choose its thresholds: grid, exact, and matched coverage."""
    pieces = sweep(tiers, tunable, calibration, target_rows, seed=seed, context=context, prices=prices, concurrency=concurrency,
                   desc=desc, progress=progress)
    grid = evaluate(pieces, tunable.grid)
    exact = evaluate(pieces, breakpoint_thresholds(pieces, tunable.scale))
    picks = {"grid": cheapest(grid, 1 - alpha), "exact": cheapest(exact, 1 - alpha)}
    if matched_coverage is not None:
        picks["matched"] = cheapest(exact, matched_coverage)
    return {"picks": picks, "grid": grid, "curve": exact, "probes": sum(len(p) for p in pieces), "problems": len(pieces),
            "breakpoints": len(exact) - 1}


def run_bench(tiers: Sequence[StepModel], *, train_episodes: Sequence[Episode], policy_dir: Path | None = None,
              calibration: Sequence[Item], test: Sequence[Item], verify: Callable[[str, list[str], str], bool | None] | None,
              seeds: Sequence[int] = (0, 1, 2), alpha: float = 0.02, prices: Sequence[Prices] | None = None,
              policy: Gate | None = None, context: RouterContext | None = None, concurrency: int = 1,
              threshold_feature: str = "api_confidence", progress: bool = True, no_oracle_reason: str = "",
              frontier: Sequence[float] = ()) -> dict[str, Any]:
    """Tune the score-based methods on the calibration items, then run every method on the test items for every seed.

    Each score-based method (``tunables``) is tuned three ways on the calibration split only: on its
    grid (the paper's rule, row ``name``), at its exact breakpoints (``name-exact``), and at the
    policy's calibration coverage (``name-matched``); the policy's own κ is re-tuned the first two
    ways. Every row is compared with the policy's, paired by problem and seed (``compare``).

    With ``frontier`` coverage levels, the policy's κ and the hand rule with a confidence threshold are also swept
    on the test runs themselves (``frontier_on_test``): their cost/coverage frontiers compared at each level, and
    the policy's at the fixed hand rule's own test coverage.

    The policy is ``policy`` (a gate already checked against the tiers) or loaded from ``policy_dir``.
    The oracle row needs ``verify`` (an exact step verifier); without one it is left out and
    ``no_oracle_reason`` goes in the report's notes.
    """
    if policy is None:
        if policy_dir is None:
            raise ValueError("run_bench needs policy= (a gate) or policy_dir= (an artifact directory).")
        policy = PolicyGate.from_path(policy_dir)
    run: dict[str, Any] = {"context": context, "concurrency": concurrency}
    notes = []
    if verify is None:
        notes.append(f"Oracle row omitted: {no_oracle_reason or 'no exact step verifier was given'}.")
    methods = tunables(tiers, train_episodes, policy, threshold_feature)
    if "policy" not in methods:
        notes.append(f"The policy's κ is not re-tuned: its gate ({type(policy).__name__}) does not compare a score with a threshold.")
    alone_tiers, alone_gate, alone_prices = strongest_alone(tiers, prices)
    calibration_target = run_rows(alone_tiers, alone_gate, calibration, seed=seeds[0], prices=alone_prices, **run)
    calibration_policy = add_coverage(run_rows(tiers, policy, calibration, seed=seeds[0], prices=prices, **run), calibration_target)
    policy_coverage = sum(r["covered"] for r in calibration_policy) / len(calibration_policy)
    calibration_rule = add_coverage(run_rows(tiers, FeatureRuleGate(), calibration, seed=seeds[0], prices=prices, **run), calibration_target)
    rule_coverage = sum(r["covered"] for r in calibration_rule) / len(calibration_rule)
    chosen: dict[str, Any] = {}
    tuning: dict[str, Any] = {"policy_calibration_coverage": policy_coverage, "rule_calibration_coverage": rule_coverage}
    candidates: dict[str, Callable[[float], Gate]] = {}
    for name, tunable in tqdm(methods.items(), desc="tune thresholds (exact sweep)", disable=not progress):
        result = tune(tunable, tiers, calibration, calibration_target, alpha=alpha, seed=seeds[0], prices=prices,
                      context=context, concurrency=concurrency, matched_coverage=rule_coverage if name == "policy" else policy_coverage,
                      desc=f"sweep {name}",
                      progress=progress)
        tuning[name] = {k: result[k] for k in ("probes", "problems", "breakpoints", "curve")}
        for how, pick in result["picks"].items():
            key = name if how == "grid" and name != "policy" else f"{name}-{how}"
            chosen[key] = {"threshold": pick["threshold"], "tuning": how, "method": name,
                           "calibration": {k: pick[k] for k in ("covered", "flops", "escalation_rate")}}
            if how == "grid":
                chosen[key]["grid"] = [{"threshold": g["threshold"], "coverage": g["covered"], "flops": g["flops"]} for g in result["grid"]]
            candidates[key] = tunable.make
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in tqdm(seeds, desc="seeds", disable=not progress):
        target_rows = run_rows(alone_tiers, alone_gate, test, seed=seed, prices=alone_prices, **run)
        policy_rows = run_rows(tiers, policy, test, seed=seed, prices=prices, **run)
        rate = sum(r["escalation_rate"] for r in policy_rows) / len(policy_rows)
        per_seed = {"target": target_rows, "policy": policy_rows,
                    "draft": run_rows(tiers, AlwaysDraftGate(), test, seed=seed, prices=prices, **run),
                    "random": run_rows(tiers, RandomGate(rate, seed=seed), test, seed=seed, prices=prices, **run),
                    "rule": run_rows(tiers, FeatureRuleGate(), test, seed=seed, prices=prices, **run)}
        done: dict[tuple[str, float], list[dict[str, Any]]] = {}  # two tunings that chose the same threshold share one run
        for key, make in candidates.items():
            same = (chosen[key]["method"], chosen[key]["threshold"])
            if same not in done:
                done[same] = run_rows(tiers, make(chosen[key]["threshold"]), test, seed=seed, prices=prices, **run)
            per_seed[key] = [dict(r) for r in done[same]]
        if verify is not None:
            per_seed["oracle"] = run_rows(tiers, OracleGate(verify), test, seed=seed, prices=prices, **run)
        for name, method_rows in per_seed.items():
            for row in add_coverage(method_rows, target_rows):
                row["seed"] = seed
            rows.setdefault(name, []).extend(method_rows)
    report_frontier = {}
    if frontier and "policy" in methods:
        report_frontier = frontier_on_test(tiers, {n: methods[n] for n in ("policy", "rule-threshold") if n in methods}, test, rows,
                                           seeds=seeds, levels=frontier, prices=prices, context=context, concurrency=concurrency,
                                           progress=progress)
    elif frontier:
        notes.append("No frontier on the test runs: the policy's κ cannot be swept.")
    summary = {name: summarize(method_rows) for name, method_rows in rows.items()}
    comparisons = {name: compare(method_rows, rows["policy"]) for name, method_rows in rows.items() if name != "policy"}
    if "policy-matched" in rows:  # the policy's cost against the hand rule's at the rule's coverage, paired
        comparisons["policy-matched"] = {**comparisons["policy-matched"], "versus_rule": compare(rows["policy-matched"], rows["rule"])}
    return {"alpha": alpha, "seeds": list(seeds), "problems": len(test), "calibration_problems": len(calibration),
            "threshold_features": {"threshold": threshold_feature, "threshold-alt": next(f for f in CONFIDENCE_FEATURES if f != threshold_feature),
                                   "rule-threshold": threshold_feature},
            "thresholds": chosen, "tuning": tuning, "summary": summary, "comparisons": comparisons, "notes": notes, "rows": rows,
            **({"frontier": report_frontier} if report_frontier else {})}


def frontier_on_test(tiers: Sequence[StepModel], families: Mapping[str, Tunable], test: Sequence[Item],
                     rows: Mapping[str, Sequence[Mapping[str, Any]]], *, seeds: Sequence[int], levels: Sequence[float],
                     prices: Sequence[Prices] | None, context: RouterContext | None, concurrency: int, progress: bool) -> dict[str, Any]:
    """Each family (``policy`` among them) swept on the test runs: at each coverage level its cheapest threshold on
    these runs and the paired difference from the policy's; and the policy's cheapest κ at the fixed hand rule's
    test coverage against the rule. Thresholds chosen on the runs they are scored on: frontiers, not deployed routers."""
    pieces = {name: [p for seed in seeds for p in sweep(tiers, tunable, test, [r for r in rows["target"] if r["seed"] == seed],
                                                        seed=seed, context=context, prices=prices, concurrency=concurrency,
                                                        desc=f"frontier {name} seed {seed}", progress=progress)]
              for name, tunable in families.items()}
    rule_coverage = sum(float(r["covered"]) for r in rows["rule"]) / len(rows["rule"])
    out: dict[str, Any] = {"levels": {}}
    for level in levels:
        chosen = {name: cheapest_rows(p, level) for name, p in pieces.items()}
        out["levels"][f"{level:g}"] = {
            "points": {n: point for n, (point, _) in chosen.items()},
            "minus_policy": {n: {m: paired_difference(r, chosen["policy"][1], m) for m in ("flops", "covered")}
                             for n, (_, r) in chosen.items() if n != "policy"}}
    point, policy_rows = cheapest_rows(pieces["policy"], rule_coverage)
    out["at_rule_coverage"] = {"coverage": rule_coverage, "policy": point,
                               "policy_minus_rule": {m: paired_difference(policy_rows, rows["rule"], m) for m in ("flops", "covered")}}
    return out


BASE = ["threshold", "threshold-alt", "rule-threshold", "steer", "rsd", "specreason"]
ORDER = ["target", "draft", "random", *BASE, "policy", *(f"{m}-{how}" for how in ("exact", "matched") for m in BASE),
         "policy-grid", "policy-exact", "rule", "policy-matched", "oracle"]
METHOD_LABELS = {"threshold": "Confidence threshold", "threshold-alt": "Confidence threshold",
                 "rule-threshold": "Hand rule or confidence threshold", "steer": "STEER (stepwise GMM)",
                 "rsd": "RSD (PRM)", "specreason": "SpecReason (target judge)", "policy": "CPO policy κ"}
LABELS = {"target": "Target only", "draft": "Draft only", "random": "Random (matched rate)", "policy": "CPO policy (ours)",
          "rule": "Hand rule (arithmetic_error or ungrounded_operands)",
          "policy-matched": "CPO policy κ, matched to the hand rule's coverage", "oracle": "Oracle"}
TUNING_LABELS = {"grid": "0.1 grid", "exact": "exact breakpoints", "matched": "matched to the policy's coverage"}


def label(name: str, report: Mapping[str, Any]) -> str:
    """A row's label: the method, its confidence feature, and how its threshold was tuned."""
    if name in LABELS:
        return LABELS[name]
    how = "exact" if name.endswith("-exact") else "matched" if name.endswith("-matched") else "grid"
    method = name.removesuffix("-exact").removesuffix("-matched").removesuffix("-grid")
    text = METHOD_LABELS[method]
    if method.startswith("threshold") or method == "rule-threshold":
        text += f" ({report.get('threshold_features', {}).get(method, 'api_confidence')})"
    return f"{text}, {TUNING_LABELS[how]}"


def markdown_table(report: Mapping[str, Any]) -> str:
    """The paper's Table 1 layout (accuracy, relative coverage, cost, A/C, escalation rate per method), then
    the paired comparison with the policy, and how each threshold was tuned on the calibration split."""

    def cell(stat: Mapping[str, float], scale: float = 1.0, digits: int = 3) -> str:
        return f"{stat['mean'] / scale:.{digits}f} [{stat['low'] / scale:.{digits}f}, {stat['high'] / scale:.{digits}f}]"

    names = [n for n in ORDER if n in report["summary"]]
    target_flops = report["summary"].get("target", {}).get("flops", {}).get("mean")
    lines = [("| method | threshold | accuracy | relative coverage | MFLOPs | FLOPs / target | prefill MFLOPs | $ per 1k problems "
             "| A/C (acc/MFLOP) | escalation rate | s / problem | Δ MFLOPs vs policy [95% CI] | McNemar p (misses: row only / policy only) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        s, c = report["summary"][name], report.get("comparisons", {}).get(name)
        threshold = report["thresholds"].get(name, {}).get("threshold", "")
        ratio = f"{s['flops']['mean'] / target_flops:.3f}" if target_flops else ""
        versus = f"{c['diff'] / 1e6:+.1f} [{c['low'] / 1e6:+.1f}, {c['high'] / 1e6:+.1f}]" if c else ""
        mcn = f"{c['mcnemar']['p_value']:.3g} ({c['mcnemar']['only_a']:.0f} / {c['mcnemar']['only_b']:.0f})" if c else ""
        lines.append(
            f"| {label(name, report)} | {_number(threshold)} | {cell(s['correct'])} | {cell(s['covered'])} | {cell(s['flops'], 1e6, 1)} "
            f"| {ratio} | {cell(s['prefill_flops'], 1e6, 1)} | {s['usd']['mean'] * 1000:.4f} | {s['a_over_c_per_mflop']:.4f} "
            f"| {cell(s['escalation_rate'])} | {s['seconds']['mean']:.3f} | {versus} | {mcn} |"
        )
    versus_rule = report.get("comparisons", {}).get("policy-matched", {}).get("versus_rule")
    if versus_rule:
        lines.append(f"\nThe policy against the hand rule at the rule's calibration coverage "
                     f"({report['tuning']['rule_calibration_coverage']:.3f}): Δ MFLOPs (policy κ matched − rule) "
                     f"{versus_rule['diff'] / 1e6:+.1f} [{versus_rule['low'] / 1e6:+.1f}, {versus_rule['high'] / 1e6:+.1f}] (paired 95% CI).")
    lines += _frontier_lines(report.get("frontier"))
    lines += [f"\n{note}" for note in report.get("notes", [])]
    tuning = report.get("tuning", {})
    if any(isinstance(v, dict) for v in tuning.values()):
        lines += ["", (f"Thresholds chosen on {report['calibration_problems']} calibration problems (cheapest with relative "
                  f"coverage ≥ {1 - report['alpha']:.3g}; matched: ≥ the policy's calibration coverage "
                  f"{tuning.get('policy_calibration_coverage', float('nan')):.3f}); cells are threshold: coverage / MFLOPs. "
                  "Exact: every breakpoint, found by one calibration run per piece of each problem's threshold axis."), "",
                  "| method | grid | exact | matched | runs of a problem | breakpoints |", "|---|---|---|---|---|---|"]
        for method, t in tuning.items():
            if not isinstance(t, dict):
                continue
            cells = []
            for key in ((method if method != "policy" else "policy-grid"), f"{method}-exact", f"{method}-matched"):
                pick = report["thresholds"].get(key)
                cells.append(f"{_number(pick['threshold'])}: {pick['calibration']['covered']:.3f} / {pick['calibration']['flops'] / 1e6:.1f}"
                             if pick else "")
            lines.append(f"| {METHOD_LABELS[method]}{_feature(method, report)} | {' | '.join(cells)} | {t['probes']} | {t['breakpoints']} |")
    return "\n".join(lines) + "\n"


def _frontier_lines(frontier: Mapping[str, Any] | None) -> list[str]:
    """The frontiers on the test runs (``frontier_on_test``) as a table, and the policy at the hand rule's coverage."""
    if not frontier:
        return []
    names = [n for n in next(iter(frontier["levels"].values()))["points"] if n != "policy"]
    lines = ["", ("Frontiers on the test runs (each family at its cheapest threshold with test coverage ≥ the level, chosen on "
                  "these very runs; generated FLOPs; cells are coverage / MFLOPs, Δ paired 95% CI):"), "",
             "| coverage ≥ | CPO policy κ | " + " | ".join(f"{METHOD_LABELS[n]} | Δ MFLOPs vs policy" for n in names) + " |",
             "|---" * (2 + 2 * len(names)) + "|"]
    for level, m in frontier["levels"].items():
        cells = [f"{p['covered']:.3f} / {p['flops'] / 1e6:.1f}" for p in (m["points"][n] for n in ["policy", *names])]
        deltas = [m["minus_policy"][n]["flops"] for n in names]
        lines.append(f"| {level} | {cells[0]} | " + " | ".join(
            f"{c} | {d['mean'] / 1e6:+.1f} [{d['low'] / 1e6:+.1f}, {d['high'] / 1e6:+.1f}]" for c, d in zip(cells[1:], deltas, strict=True)) + " |")
    at = frontier["at_rule_coverage"]
    d = at["policy_minus_rule"]["flops"]
    lines.append(f"\nAt the hand rule's own test coverage ({at['coverage']:.3f}) the policy's cheapest κ on these runs "
                 f"({_number(at['policy']['threshold'])}) keeps {at['policy']['covered']:.3f} at {at['policy']['flops'] / 1e6:.1f} MFLOPs: "
                 f"Δ MFLOPs (policy − rule) {d['mean'] / 1e6:+.1f} [{d['low'] / 1e6:+.1f}, {d['high'] / 1e6:+.1f}] (paired 95% CI).")
    return lines


def _feature(method: str, report: Mapping[str, Any]) -> str:
    features = report.get("threshold_features", {})
    return f" ({features[method]})" if method in features else ""


def _number(value: Any) -> str:
    """Grid thresholds as written (1.0, 0.9), breakpoint midpoints to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) and value != round(value, 4) else str(value)


def write_outputs(report: Mapping[str, Any], out: Path) -> dict[str, str]:
    """results.json (everything), results.csv (summary), table.md and pareto.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "label", "tuning", "threshold", *[f"{m}_{k}" for m in METRICS for k in ("mean", "low", "high")],
                         "a_over_c_per_mflop", "flops_diff_vs_policy", "flops_diff_low", "flops_diff_high", "flops_ratio_vs_policy",
                         "misses_row_only", "misses_policy_only", "mcnemar_p"])
        for name, s in report["summary"].items():
            picked, c = report["thresholds"].get(name, {}), report.get("comparisons", {}).get(name)
            versus = [c["diff"], c["low"], c["high"], c["ratio"], c["mcnemar"]["only_a"], c["mcnemar"]["only_b"],
                      c["mcnemar"]["p_value"]] if c else [""] * 7
            writer.writerow([name, label(name, report), picked.get("tuning", ""), picked.get("threshold", ""),
                             *[s[m][k] for m in METRICS for k in ("mean", "low", "high")], s["a_over_c_per_mflop"], *versus])
    (out / "table.md").write_text(markdown_table(report))
    pareto_plot(report, out / "pareto.png")
    return {k: str(out / v) for k, v in {"json": "results.json", "csv": "results.csv", "table": "table.md", "plot": "pareto.png"}.items()}


def pareto_plot(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per method, one marker per tuning (circle: grid or untuned, square: exact, triangle: matched).
    methods = list(dict.fromkeys(name.removesuffix("-exact").removesuffix("-matched").removesuffix("-grid") for name in ORDER))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name in ORDER:
        s = report["summary"].get(name)
        if s is None:
            continue
        method = name.removesuffix("-exact").removesuffix("-matched").removesuffix("-grid")
        marker = "*" if name == "policy" else "s" if name.endswith("-exact") else "^" if name.endswith("-matched") else "o"
        x, y = s["flops"]["mean"] / 1e6, s["correct"]["mean"]
        xerr = [[x - s["flops"]["low"] / 1e6], [s["flops"]["high"] / 1e6 - x]]
        yerr = [[y - s["correct"]["low"]], [s["correct"]["high"] - y]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, markersize=12 if name == "policy" else 6, capsize=3,
                    color=colours[methods.index(method) % len(colours)], label=label(name, report))
    ax.set_xlabel("mean generated MFLOPs per problem")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Accuracy vs cost ({report['problems']} problems x {len(report['seeds'])} seeds, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
