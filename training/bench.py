"""Every routing method side by side on the same problems, seeds and graph: ``stepgraph bench``.

Methods (all gates in the same graph): draft-only, target-only, random (escalation rate matched
to the CPO policy's), confidence threshold (API confidence), STEER (stepwise GMM fitted on the
train traces), RSD (a reward model trained on the train traces' step verdicts), SpecReason (the
target's likelihood of the draft step), the CPO policy, and the oracle (escalate exactly the
drafts the exact verifier rejects). SpecReason's judging passes are counted in its FLOPs (2·N of
the target per draft token scored). Threshold baselines take the cheapest threshold of the grid
0.0, 0.1, ..., 1.0 (for a raw-logit confidence: the deciles of the train traces' confidences) whose relative coverage on the calibration split is ≥ 1 − α, as in the paper.
Every metric is a mean over problems (and seeds) with a bootstrap 95% interval over problems.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stepgraph.training.collect import Item
from stepgraph.training.prm import StepRewardModel
from stepgraph.training.records import Episode
from stepgraph.training.runs import add_coverage, run_gate
from tqdm import tqdm

from stepgraph.context import RouterContext
from stepgraph.costs import Prices
from stepgraph.gates import (
    AlwaysDraftGate,
    AlwaysTargetGate,
    ConfidenceThresholdGate,
    PolicyGate,
    RandomGate,
    StepwiseGMMGate,
)
from stepgraph.gates.base import Gate
from stepgraph.gates.judges import JudgeGate, OracleGate, ProcessRewardGate
from stepgraph.models.base import StepModel

GRID = [round(0.1 * i, 1) for i in range(11)]
METRICS = ("correct", "covered", "flops", "prefill_flops", "usd", "escalation_rate", "seconds")


def run_rows(tiers: Sequence[StepModel], gate: Gate, items: Sequence[Item], *, seed: int, prices: Sequence[Prices] | None,
             temperature: float = 0.7, context: RouterContext | None = None, concurrency: int = 1) -> list[dict[str, Any]]:
    """One row per problem (``runs.run_gate``) without a progress bar of its own: the bench shows its own."""
    return run_gate(tiers, gate, items, seed=seed, context=context or RouterContext(temperature=temperature), prices=prices,
                    concurrency=concurrency, progress=False)


def bootstrap(values: Sequence[float], n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a percentile bootstrap 95% interval."""
    rng = random.Random(seed)
    n = len(values)
    mean = sum(values) / n
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples))
    return mean, means[int(0.025 * n_resamples)], means[int(0.975 * n_resamples) - 1]


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-metric mean and 95% interval, plus A/C (accuracy per mean MFLOPs)."""
    summary: dict[str, Any] = {}
    for metric in METRICS:
        mean, low, high = bootstrap([float(r[metric]) for r in rows])
        summary[metric] = {"mean": mean, "low": low, "high": high}
    flops = summary["flops"]["mean"]
    summary["a_over_c_per_mflop"] = summary["correct"]["mean"] / (flops / 1e6) if flops else float("nan")
    return summary


def pick_threshold(make_gate: Callable[[float], Gate], tiers: Sequence[StepModel], items: Sequence[Item],
                   target_rows: Sequence[Mapping[str, Any]], alpha: float, seed: int,
                   prices: Sequence[Prices] | None, grid: Sequence[float] = GRID, **run: Any) -> tuple[float, list[dict[str, float]]]:
    """Grid-search the threshold on calibration problems: cheapest with coverage ≥ 1 − α."""
    trials = []
    for threshold in grid:
        rows = add_coverage(run_rows(tiers, make_gate(threshold), items, seed=seed, prices=prices, **run), target_rows)
        trials.append({"threshold": threshold, "coverage": sum(r["covered"] for r in rows) / len(rows),
                       "flops": sum(r["flops"] for r in rows) / len(rows)})
    feasible = [t for t in trials if t["coverage"] >= 1 - alpha]
    best = min(feasible, key=lambda t: t["flops"]) if feasible else max(trials, key=lambda t: (t["coverage"], -t["flops"]))
    return best["threshold"], trials


def run_bench(tiers: Sequence[StepModel], *, train_episodes: Sequence[Episode], policy_dir: Path | None = None,
              calibration: Sequence[Item], test: Sequence[Item], verify: Callable[[str, list[str], str], bool | None] | None,
              seeds: Sequence[int] = (0, 1, 2), alpha: float = 0.02, prices: Sequence[Prices] | None = None,
              policy: Gate | None = None, context: RouterContext | None = None, concurrency: int = 1,
              threshold_feature: str = "api_confidence", progress: bool = True) -> dict[str, Any]:
    """Calibrate the threshold baselines, then run every method on the test items for every seed.

    The policy is ``policy`` (a gate already checked against the tiers) or loaded from ``policy_dir``.
    The oracle row needs ``verify`` (an exact step verifier); without one it is left out. STEER
    needs the draft's logit confidence in the train traces and SpecReason a target that scores
    steps (``step_logprobs``); a method whose input the tiers do not give is left out.
    """
    run: dict[str, Any] = {"context": context, "concurrency": concurrency}
    scores_by_step: dict[int, list[float]] = {}
    for episode in train_episodes:
        for step in episode.steps:
            confidence = step.observation.get("logit_confidence")
            if confidence is not None:
                scores_by_step.setdefault(step.index, []).append(confidence)
    prm = StepRewardModel().fit(train_episodes)
    target = tiers[-1]
    threshold_methods: dict[str, Callable[[float], Gate]] = {
        "threshold": lambda t: ConfidenceThresholdGate(t, feature=threshold_feature),
        "rsd": lambda t: ProcessRewardGate(prm, t),
    }
    grids: dict[str, Sequence[float]] = {}
    if threshold_feature == "logit_confidence":  # raw logits are not in [0, 1]: the grid is the train traces' deciles
        logits = sorted(v for values in scores_by_step.values() for v in values)
        if logits:
            grids["threshold"] = sorted({round(logits[min(len(logits) - 1, int(q * len(logits)))], 3) for q in GRID})
    if scores_by_step:
        steer = StepwiseGMMGate.fit(scores_by_step)
        threshold_methods["steer"] = lambda t: StepwiseGMMGate(steer.mixtures, steer.pooled, threshold=t)
    if hasattr(target, "step_logprobs"):
        threshold_methods["specreason"] = lambda t: JudgeGate(target, t)  # type: ignore[arg-type]
    calibration_target = run_rows(tiers, AlwaysTargetGate(), calibration, seed=seeds[0], prices=prices, **run)
    chosen: dict[str, Any] = {}
    for name, make in tqdm(threshold_methods.items(), desc="calibrate thresholds", disable=not progress):
        threshold, trials = pick_threshold(make, tiers, calibration, calibration_target, alpha, seeds[0], prices,
                                           grids.get(name, GRID), **run)
        chosen[name] = {"threshold": threshold, "grid": trials}
    if policy is None:
        if policy_dir is None:
            raise ValueError("run_bench needs policy= (a gate) or policy_dir= (an artifact directory).")
        policy = PolicyGate.from_path(policy_dir)
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in tqdm(seeds, desc="seeds", disable=not progress):
        target_rows = run_rows(tiers, AlwaysTargetGate(), test, seed=seed, prices=prices, **run)
        policy_rows = run_rows(tiers, policy, test, seed=seed, prices=prices, **run)
        rate = sum(r["escalation_rate"] for r in policy_rows) / len(policy_rows)
        gates: dict[str, Gate] = {
            "draft": AlwaysDraftGate(),
            "random": RandomGate(rate, seed=seed),
            **{name: threshold_methods[name](chosen[name]["threshold"]) for name in threshold_methods},
        }
        if verify is not None:
            gates["oracle"] = OracleGate(verify)
        per_seed = {"target": target_rows, "policy": policy_rows}
        per_seed |= {name: run_rows(tiers, gate, test, seed=seed, prices=prices, **run) for name, gate in gates.items()}
        for name, method_rows in per_seed.items():
            for row in add_coverage(method_rows, target_rows):
                row["seed"] = seed
            rows.setdefault(name, []).extend(method_rows)
    summary = {name: summarize(method_rows) for name, method_rows in rows.items()}
    return {"alpha": alpha, "seeds": list(seeds), "problems": len(test), "calibration_problems": len(calibration),
            "thresholds": chosen, "summary": summary, "rows": rows}


ORDER = ["target", "draft", "random", "threshold", "steer", "rsd", "specreason", "policy", "oracle"]
LABELS = {"target": "Target only", "draft": "Draft only", "random": "Random (matched rate)", "threshold": "Confidence threshold",
          "steer": "STEER (stepwise GMM)", "rsd": "RSD (PRM)", "specreason": "SpecReason (target judge)",
          "policy": "CPO policy (ours)", "oracle": "Oracle"}


def markdown_table(report: Mapping[str, Any]) -> str:
    """The paper's Table 1 layout: accuracy, relative coverage, cost, A/C, escalation rate per method."""

    def cell(stat: Mapping[str, float], scale: float = 1.0, digits: int = 3) -> str:
        return f"{stat['mean'] / scale:.{digits}f} [{stat['low'] / scale:.{digits}f}, {stat['high'] / scale:.{digits}f}]"

    lines = ["| method | threshold | accuracy | relative coverage | MFLOPs | prefill MFLOPs | $ per 1k problems | A/C (acc/MFLOP) | escalation rate | s / problem |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        s = report["summary"].get(name)
        if s is None:
            continue
        threshold = report["thresholds"].get(name, {}).get("threshold", "")
        lines.append(
            f"| {LABELS[name]} | {threshold} | {cell(s['correct'])} | {cell(s['covered'])} | {cell(s['flops'], 1e6, 1)} "
            f"| {cell(s['prefill_flops'], 1e6, 1)} | {s['usd']['mean'] * 1000:.4f} | {s['a_over_c_per_mflop']:.4f} "
            f"| {cell(s['escalation_rate'])} | {s['seconds']['mean']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(report: Mapping[str, Any], out: Path) -> dict[str, str]:
    """results.json (everything), results.csv (summary), table.md and pareto.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", *[f"{m}_{k}" for m in METRICS for k in ("mean", "low", "high")], "a_over_c_per_mflop"])
        for name, s in report["summary"].items():
            writer.writerow([name, *[s[m][k] for m in METRICS for k in ("mean", "low", "high")], s["a_over_c_per_mflop"]])
    (out / "table.md").write_text(markdown_table(report))
    pareto_plot(report, out / "pareto.png")
    return {k: str(out / v) for k, v in {"json": "results.json", "csv": "results.csv", "table": "table.md", "plot": "pareto.png"}.items()}


def pareto_plot(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in ORDER:
        s = report["summary"].get(name)
        if s is None:
            continue
        x, y = s["flops"]["mean"] / 1e6, s["correct"]["mean"]
        xerr = [[x - s["flops"]["low"] / 1e6], [s["flops"]["high"] / 1e6 - x]]
        yerr = [[y - s["correct"]["low"]], [s["correct"]["high"] - y]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="*" if name == "policy" else "o", markersize=12 if name == "policy" else 6,
                    capsize=3, label=LABELS[name])
    ax.set_xlabel("mean generated MFLOPs per problem")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Accuracy vs cost ({report['problems']} problems x {len(report['seeds'])} seeds, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
