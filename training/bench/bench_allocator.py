"""Bench rows for the ex-ante allocator: alone, and combined with the post-hoc policy, on the same problems and seeds.

``allocator_rows`` answers items with any graph configuration (gate, optional allocator) under
``runs``' seed rules, so its rows pair with ``bench.run_rows`` / ``runs.run_gate`` rows of the same
items and seeds. Besides ``runs.run_gate``'s fields a row counts the draft calls made and saved
(steps whose first call went above tier 0) and the steps each tier wrote. ``allocator_bench``
runs the four methods (target only, the policy, the allocator alone, allocator + policy) and
summarises them with ``bench.summarize`` plus a paired interval of each method's FLOPs against
the policy's.

    stepgraph bench-allocator --allocator runs/allocator \
        --combined-allocator runs/allocator-combined --problems 200 --seeds 0 1 2
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stepgraph.training.bench.bench import paired_difference, summarize
from stepgraph.training.collection.collect import Item, testbed_items
from stepgraph.training.collection.runs import add_coverage, run_seed, strongest_alone

from stepgraph.answers import is_correct
from stepgraph.context import RouterContext
from stepgraph.graph import build_graph
from stepgraph.models.base import StepModel
from stepgraph.models.costs import Prices
from stepgraph.routing.allocator import Allocator
from stepgraph.routing.gates import AlwaysDraftGate
from stepgraph.routing.gates.base import Gate

EXTRA_METRICS = ("draft_calls", "draft_calls_saved", "sent_up_rate")


def allocator_rows(tiers: Sequence[StepModel], gate: Gate, items: Sequence[Item], *, seed: int,
                   allocator: Allocator | None = None, prices: Sequence[Prices] | None = None,
                   context: RouterContext | None = None) -> list[dict[str, Any]]:
    """One row per item, in item order, as ``runs.run_gate`` makes them, plus draft calls and steps per tier."""
    graph = build_graph(tiers, gate, prices=prices, allocator=allocator)
    base = context or RouterContext()
    rows = []
    for index, item in enumerate(items):
        started = time.perf_counter()
        state = graph.invoke({"question": item.question}, context=RouterContext(**{**vars(base), "seed": run_seed(seed, index)}))
        steps = state["steps"]
        escalated = sum(s["escalated"] for s in steps)
        sent_up = sum(bool(s["attempts"]) and s["attempts"][0]["tier"] > 0 for s in steps)
        rows.append({
            "problem_id": item.problem_id,
            "answer": state["answer"],
            "correct": float(is_correct(state["answer"], item.reference)),
            "flops": state["totals"]["flops"],
            "prefill_flops": state["totals"]["prefill_flops"],
            "usd": state["totals"]["usd"],
            "steps": len(steps),
            "escalated_steps": escalated,
            "escalation_rate": escalated / max(1, len(steps)),
            "draft_calls": sum(a["tier"] == 0 for s in steps for a in s["attempts"]),
            "draft_calls_saved": sent_up,
            "sent_up_rate": sent_up / max(1, len(steps)),
            "tier_steps": [sum(s["tier"] == k for s in steps) for k in range(len(tiers))],
            "seconds": time.perf_counter() - started,
        })
    return rows


def allocator_bench(tiers: Sequence[StepModel], items: Sequence[Item], *, allocator: Allocator, policy: Gate,
                    combined: Allocator | None = None, seeds: Sequence[int] = (0, 1, 2), prices: Sequence[Prices] | None = None,
                    context: RouterContext | None = None) -> dict[str, Any]:
    """Target only, the policy, the allocator alone and allocator + policy, on the same items and seeds.

    ``combined`` is the allocator calibrated for the combination with ``policy`` (``stepgraph train
    --allocator --allocator-gate``); default: ``allocator``.
    """
    alone_tiers, alone_gate, alone_prices = strongest_alone(tiers, prices)
    methods: dict[str, tuple[Sequence[StepModel], Gate, Allocator | None, Sequence[Prices] | None]] = {
        "target": (alone_tiers, alone_gate, None, alone_prices), "policy": (tiers, policy, None, prices),
        "allocator": (tiers, AlwaysDraftGate(), allocator, prices), "allocator+policy": (tiers, policy, combined or allocator, prices),
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
    for seed in seeds:
        per_seed = {name: allocator_rows(run_tiers, gate, items, seed=seed, allocator=alloc, prices=run_prices, context=context)
                    for name, (run_tiers, gate, alloc, run_prices) in methods.items()}
        for name, method_rows in per_seed.items():
            for row in add_coverage(method_rows, per_seed["target"]):
                row["seed"] = seed
            rows[name].extend(method_rows)
    summary = {}
    for name, method_rows in rows.items():
        summary[name] = summarize(method_rows) | {m: sum(r[m] for r in method_rows) / len(method_rows) for m in EXTRA_METRICS}
        summary[name]["flops_vs_policy"] = paired_difference(method_rows, rows["policy"], "flops")
        summary[name]["coverage_vs_policy"] = paired_difference(method_rows, rows["policy"], "covered")
    return {"seeds": list(seeds), "problems": len(items), "summary": summary, "rows": rows}


def markdown_table(report: Mapping[str, Any]) -> str:
    """Coverage, FLOPs (and the paired difference to the policy), draft calls made and saved per problem."""
    header = ("| method | accuracy | relative coverage | MFLOPs | Δ MFLOPs vs policy (paired 95% CI) | draft calls / problem "
              "| draft calls saved / problem | steps sent up ex ante | s / problem |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["summary"].items():
        d = s["flops_vs_policy"]
        lines.append(
            f"| {name} | {s['correct']['mean']:.3f} | {s['covered']['mean']:.3f} [{s['covered']['low']:.3f}, {s['covered']['high']:.3f}] "
            f"| {s['flops']['mean'] / 1e6:.1f} | {d['mean'] / 1e6:+.1f} [{d['low'] / 1e6:+.1f}, {d['high'] / 1e6:+.1f}] "
            f"| {s['draft_calls']:.2f} | {s['draft_calls_saved']:.2f} | {s['sent_up_rate']:.3f} | {s['seconds']['mean']:.3f} |")
    return "\n".join(lines) + "\n"


def bench_trained_allocator(allocator: Path, *, combined_allocator: Path | None = None, policy: Path | None = None,
                            problems: int = 200, seed: int = 0, seeds: Sequence[int] = (0, 1, 2),
                            out: Path | None = None) -> dict[str, Any]:
    """Bench a trained allocator on the testbed's test split against the shipped (or a given) policy; the report,
    also written to ``out`` as JSON."""
    from stepgraph.defaults import DEFAULT_POLICY_DIR
    from stepgraph.routing.gates import PolicyGate
    from stepgraph.routing.learned_allocator import LearnedAllocator
    from stepgraph.testbed import load_pair

    policy = policy or DEFAULT_POLICY_DIR
    tiers = load_pair()
    described = [{"name": m.name, "parameters": m.n_params} for m in tiers]
    trained = LearnedAllocator.from_path(allocator, described)
    combined = LearnedAllocator.from_path(combined_allocator, described) if combined_allocator else None
    report = allocator_bench(tiers, testbed_items("test", problems, seed=seed), allocator=trained,
                             policy=PolicyGate.from_path(policy), combined=combined, seeds=seeds)
    report |= {"allocator": str(allocator), "combined_allocator": str(combined_allocator or allocator), "policy": str(policy)}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":  # the old path of `stepgraph bench-allocator`
    from stepgraph.cli import run_old_path
    run_old_path(__spec__.name, "bench-allocator")
