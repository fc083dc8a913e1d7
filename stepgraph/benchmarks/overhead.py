"""Benchmark: routing overhead per step (graph + features + gate) as a ratio of one draft call.

Models are wrapped in a timer; everything a run spends outside ``generate_step`` is routing
overhead. Both numbers come from the same runs, so the ratio is robust to machine noise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from stepgraph.context import RouterContext
from stepgraph.graph import build_graph
from stepgraph.models.base import StepModel, StepOutput
from stepgraph.testbed import load_pair, testbed_task
from stepgraph.testbed.defaults import resolve_gate


class TimedModel:
    """A StepModel proxy that records how long each ``generate_step`` call took (thread-safe)."""

    def __init__(self, model: StepModel) -> None:
        self.model, self.name, self.n_params = model, model.name, model.n_params
        self.durations: list[float] = []  # list.append is atomic, so batched runs in threads are fine

    @property
    def seconds(self) -> float:
        return sum(self.durations)

    @property
    def calls(self) -> int:
        return len(self.durations)

    def generate_step(self, question: str, steps: Sequence[str], **kwargs) -> StepOutput:
        started = time.perf_counter()
        try:
            return self.model.generate_step(question, steps, **kwargs)
        finally:
            self.durations.append(time.perf_counter() - started)


def measure_overhead(n_problems: int = 20, seed: int = 0, gate_name: str | None = None) -> dict:
    """Run the default graph on test problems; report overhead per step and its ratio to a draft call."""
    tiers = [TimedModel(m) for m in load_pair()]
    graph = build_graph(tiers, resolve_gate(gate_name, n_tiers=len(tiers)))
    problems = testbed_task().generate("test", n_problems, seed=seed)
    graph.invoke({"question": problems[0].question}, context=RouterContext(seed=seed))  # warm-up
    for t in tiers:
        t.durations.clear()
    n_steps, started = 0, time.perf_counter()
    for i, problem in enumerate(problems):
        n_steps += len(graph.invoke({"question": problem.question}, context=RouterContext(seed=seed + i))["steps"])
    wall = time.perf_counter() - started
    model_seconds = sum(t.seconds for t in tiers)
    draft_call = tiers[0].seconds / max(1, tiers[0].calls)
    overhead_per_step = (wall - model_seconds) / max(1, n_steps)
    return {
        "problems": n_problems,
        "steps": n_steps,
        "draft_call_ms": round(1000 * draft_call, 3),
        "routing_overhead_per_step_ms": round(1000 * overhead_per_step, 3),
        "overhead_ratio_to_draft_call": round(overhead_per_step / draft_call, 3) if draft_call else None,
        "wall_seconds": round(wall, 2),
    }
