"""Evaluate gates live in the graph (not on replays), side by side on the same problems and seeds.

Relative coverage is P(R_routed = 1 ∨ R_M = 0): the routed system is right whenever the
strongest tier alone (the ``target`` row, run in the same evaluation with the same seeds) is.
A/C is accuracy per mean cost, with cost in MFLOPs (generated tokens, 2·N per token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stepgraph.training.collection.collect import Item
from stepgraph.training.collection.runs import run_gate, strongest_alone

from stepgraph.context import RouterContext
from stepgraph.models.base import DEFAULT_TEMPERATURE, StepModel
from stepgraph.models.costs import Prices
from stepgraph.routing.gates import AlwaysDraftGate
from stepgraph.routing.gates.base import Gate


def summarize(rows: Sequence[Mapping[str, Any]], target_rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy, relative coverage against the target rows, escalation rate, FLOPs and A/C."""
    n = len(rows)
    accuracy = sum(r["correct"] for r in rows) / n
    coverage = sum(1 for r, t in zip(rows, target_rows) if r["correct"] or not t["correct"]) / n
    flops = sum(r["flops"] for r in rows) / n
    return {
        "accuracy": round(accuracy, 4),
        "relative_coverage": round(coverage, 4),
        "escalation_rate": round(sum(r["escalated_steps"] for r in rows) / max(1, sum(r["steps"] for r in rows)), 4),
        "mean_flops": flops,
        "mean_prefill_flops": sum(r["prefill_flops"] for r in rows) / n,
        "mean_usd": sum(r["usd"] for r in rows) / n,
        "a_over_c_per_mflop": round(accuracy / (flops / 1e6), 5) if flops else float("nan"),
    }


def evaluate_gates(tiers: Sequence[StepModel], gates: Mapping[str, Gate], items: Sequence[Item], *, seed: int = 0,
                   temperature: float = DEFAULT_TEMPERATURE, context: RouterContext | None = None, prices: Sequence[Prices] | None = None,
                   concurrency: int = 1, progress: bool = True, journal_dir: Path | None = None) -> dict[str, dict[str, float]]:
    """Run target-only, draft-only and every given gate on the same items; summarise each.

    ``context`` (default: temperature only) sets the run limits; item seeds follow ``runs.run_seed``.
    With ``journal_dir``, each gate's rows go to ``journal_dir/<name>.jsonl`` as they finish, and a
    killed evaluation resumes from them.
    """
    if not items:
        raise ValueError("evaluate_gates needs at least one item.")
    context = context or RouterContext(temperature=temperature)
    runs = {"target": strongest_alone(tiers, prices), "draft": (tiers, AlwaysDraftGate(), prices),
            **{name: (tiers, gate, prices) for name, gate in gates.items()}}
    if journal_dir is not None:
        journal_dir.mkdir(parents=True, exist_ok=True)
    rows = {name: run_gate(run_tiers, gate, items, seed=seed, context=context, prices=run_prices, concurrency=concurrency,
                           desc=name, progress=progress,
                           journal=journal_dir / f"{name.replace('/', '_')}.jsonl" if journal_dir else None)
            for name, (run_tiers, gate, run_prices) in runs.items()}
    target_flops = sum(r["flops"] for r in rows["target"]) / len(items)
    report = {}
    for name, gate_rows in rows.items():
        summary = summarize(gate_rows, rows["target"])
        summary["flops_vs_target"] = round(summary["mean_flops"] / target_flops, 4)
        report[name] = summary
    return report
