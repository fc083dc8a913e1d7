"""Bench rows for the ex-ante allocator: alone, and combined with the post-hoc policy, on the same problems and seeds.

``allocator_rows`` answers items with any graph configuration (gate, optional allocator) under
``runs``' seed rules, so its rows pair with ``bench.run_rows`` / ``runs.run_gate`` rows of the same
items and seeds. Besides ``runs.run_gate``'s fields a row counts the draft calls made and saved
(steps whose first call went above tier 0) and the steps each tier wrote. ``allocator_bench``
runs the four methods (target only, the policy, the allocator alone, allocator + policy) and
summarises them with ``bench.summarize`` plus a paired interval of each method's FLOPs against
the policy's.

    python -m stepgraph.training.bench.bench_allocator --allocator runs/allocator \
        --combined-allocator runs/allocator-combined --problems 200 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stepgraph.training.bench.bench import paired_difference, summarize
from stepgraph.training.collection.collect import Item, testbed_items
from stepgraph.training.collection.runs import add_coverage, run_seed

from stepgraph.allocator import Allocator
from stepgraph.answers import is_correct
from stepgraph.context import RouterContext
from stepgraph.costs import Prices
from stepgraph.gates import AlwaysDraftGate, AlwaysTargetGate
from stepgraph.gates.base import Gate
from stepgraph.graph import build_graph
from stepgraph.models.base import StepModel

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
    methods: dict[str, tuple[Gate, Allocator | None]] = {
        "target": (AlwaysTargetGate(), None), "policy": (policy, None),
        "allocator": (AlwaysDraftGate(), allocator), "allocator+policy": (policy, combined or allocator),
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
    for seed in seeds:
        per_seed = {name: allocator_rows(tiers, gate, items, seed=seed, allocator=alloc, prices=prices, context=context)
                    for name, (gate, alloc) in methods.items()}
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


def main(argv: Sequence[str] | None = None) -> int:
    """Bench a trained allocator on the testbed's test split against the shipped (or a given) policy."""
    from stepgraph.allocator_file import LearnedAllocator
    from stepgraph.defaults import DEFAULT_POLICY_DIR
    from stepgraph.gates import PolicyGate
    from stepgraph.testbed import load_pair

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--allocator", type=Path, default=Path("runs/allocator"), help="allocator artifact (default: %(default)s)")
    parser.add_argument("--combined-allocator", type=Path, default=None,
                        help="allocator calibrated for the combination with the policy (default: --allocator)")
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY_DIR, help="post-hoc policy (default: the shipped one)")
    parser.add_argument("--problems", type=int, default=200, help="test-split problems (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="problem-selection seed (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds (default: 0 1 2)")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here (default: print only the table)")
    args = parser.parse_args(argv)
    tiers = load_pair()
    described = [{"name": m.name, "parameters": m.n_params} for m in tiers]
    allocator = LearnedAllocator.from_path(args.allocator, described)
    combined = LearnedAllocator.from_path(args.combined_allocator, described) if args.combined_allocator else None
    report = allocator_bench(tiers, testbed_items("test", args.problems, seed=args.seed), allocator=allocator,
                             policy=PolicyGate.from_path(args.policy), combined=combined, seeds=args.seeds)
    report |= {"allocator": str(args.allocator), "combined_allocator": str(args.combined_allocator or args.allocator),
               "policy": str(args.policy)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown_table(report), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
