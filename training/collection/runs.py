"""Run a gate over items and collect one row per item: the one loop collect, evaluate and bench share.

Seed rules, in one place: item ``i`` of a run with base seed ``s`` is answered with run seed
``run_seed(s, i)``; inside that run every model call's seed is ``stepgraph.graph.nodes.call_seed(run
seed, step, tier)``. The same item therefore gets the same samples under every gate, which is
what makes the side-by-side comparisons (and relative coverage) paired.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from stepgraph.training.data.records import Item
from tqdm import tqdm

from stepgraph.answers import is_correct
from stepgraph.context import RouterContext
from stepgraph.graph import build_graph
from stepgraph.models.base import StepModel
from stepgraph.models.costs import Prices
from stepgraph.routing.gates import AlwaysDraftGate
from stepgraph.routing.gates.base import Gate

SEED_STRIDE = 100_003  # a prime: base seeds 0, 1, 2 give disjoint run seeds for up to 100k items


def run_seed(base: int, index: int) -> int:
    """The seed of the run that answers item ``index`` of a run with base seed ``base``."""
    return base * SEED_STRIDE + index


def strongest_alone(tiers: Sequence[StepModel], prices: Sequence[Prices] | None = None
                    ) -> tuple[list[StepModel], Gate, list[Prices] | None]:
    """Tiers, gate and prices of the strongest tier writing every step alone: the reference that coverage and
    "FLOPs vs target" are measured against. Not ``AlwaysTargetGate`` over ``tiers``, which also pays every
    lower tier's draft it throws away (about 9% more FLOPs on the shipped pair)."""
    return [tiers[-1], tiers[-1]], AlwaysDraftGate(), None if prices is None else [prices[-1]] * 2


def run_gate(tiers: Sequence[StepModel], gate: Gate, items: Sequence[Item], *, seed: int = 0,
             context: RouterContext | None = None, prices: Sequence[Prices] | None = None, concurrency: int = 1,
             desc: str = "", progress: bool = True, journal: Path | None = None,
             difficulties: Sequence[float | None] | None = None) -> list[dict[str, Any]]:
    """Answer every item with the routed graph; one row per item, in item order.

    Rows hold correctness (math-verify against the reference), FLOPs (judge FLOPs of a judging
    gate included), prefill FLOPs, dollars, steps (also per tier), escalations and wall time. ``concurrency``
    items run at once on threads (served models answer in parallel; local models take turns).
    A judging gate's model calls reach the run's costs through the graph state, so they are
    counted per run also under concurrency.

    With ``journal`` (a JSONL file), each finished row is appended at once and rows already there
    (same problem id and run seed) are reused, so a killed run resumes where it stopped. The
    journal is trusted to belong to the same tiers, gate and settings: use one per run.

    ``difficulties`` (one per item) sets each run's ``RouterContext.difficulty`` (RADAR's estimate).
    """
    base = context or RouterContext(seed=seed)
    graph = build_graph(tiers, gate, prices=prices)

    def answer(index: int) -> dict[str, Any]:
        ctx = RouterContext(**{**vars(base), "seed": run_seed(seed, index)}
                            | ({"difficulty": difficulties[index]} if difficulties is not None else {}))
        return answer_item(graph, items[index], ctx, len(tiers))[0]

    done = _read_journal(journal)
    rows: dict[int, dict[str, Any]] = {}
    for i, item in enumerate(items):
        if (item.problem_id, run_seed(seed, i)) in done:
            rows[i] = done[item.problem_id, run_seed(seed, i)]
    workers = max(1, concurrency)
    bar = tqdm(total=len(items), initial=len(rows), desc=desc, disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(answer, i): i for i in range(len(items)) if i not in rows}
        for future in as_completed(futures):
            row = future.result()  # an error stops the run here, not after every other item
            rows[futures[future]] = row
            if journal is not None:
                with journal.open("a") as f:
                    f.write(json.dumps({**row, "run_seed": run_seed(seed, futures[future])}) + "\n")
            bar.update()
    bar.close()
    return [rows[i] for i in range(len(items))]


def answer_item(graph: Any, item: Item, context: RouterContext, n_tiers: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Answer one item with a compiled routed graph over ``n_tiers`` tiers: its row (as ``run_gate`` gives) and the final graph state."""
    started = time.perf_counter()
    state = graph.invoke({"question": item.question}, context=context)
    steps = state["steps"]
    # A judging gate's calls are in the run's costs beside the steps' own generations.
    judge_flops = state["totals"]["flops"] - sum(a["cost"]["flops"] for s in steps for a in s["attempts"])
    escalated = sum(s["escalated"] for s in steps)
    row = {
        "problem_id": item.problem_id,
        "answer": state["answer"],
        "correct": float(is_correct(state["answer"], item.reference)),
        "flops": state["totals"]["flops"],
        "judge_flops": judge_flops,
        "prefill_flops": state["totals"]["prefill_flops"],
        "usd": state["totals"]["usd"],
        "steps": len(steps),
        "escalated_steps": escalated,
        "steps_by_tier": [sum(s["tier"] == k for s in steps) for k in range(n_tiers)],
        "escalation_rate": escalated / max(1, len(steps)),
        "seconds": time.perf_counter() - started,
    }
    return row, state


def _read_journal(journal: Path | None) -> dict[tuple[str, int], dict[str, Any]]:
    if journal is None or not journal.is_file():
        return {}
    done = {}
    for line in journal.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill: that item runs again
            continue
        done[row["problem_id"], row.pop("run_seed")] = row
    return done


def add_coverage(rows: list[dict[str, Any]], target_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mark each row covered when it is right or the strongest tier alone (same item, same seed) is wrong."""
    for row, target in zip(rows, target_rows, strict=True):
        row["covered"] = float(row["correct"] == 1.0 or target["correct"] == 0.0)
    return rows
