"""Benchmark: graph steps per second and per-step latency of each backend, batch 1 and batch 16.

Every backend runs the same routed graph (draft + target, threshold gate, greedy decoding, so
each backend does the same steps) on the same test-split problems, in one process, one backend
after the other. A batch is ``graph.batch`` over that many questions with as many threads; the
transformers backend generates one step at a time, the vLLM engine decodes the waiting steps of
all runs together. Latency is one ``generate_step`` call as the graph sees it (waiting included).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from stepgraph.benchmarks.overhead import TimedModel
from stepgraph.context import RouterContext
from stepgraph.graph import build_graph
from stepgraph.graph.state import InputState
from stepgraph.models.base import StepModel
from stepgraph.testbed import BACKENDS, close_pair, load_pair, testbed_task
from stepgraph.testbed.defaults import resolve_gate


def measure(tiers: Sequence[StepModel], questions: Sequence[str], batch: int) -> dict:
    """Steps per second and call latency of the routed graph on ``questions``, ``batch`` runs at a time."""
    timed = [TimedModel(m) for m in tiers]
    graph = build_graph(timed, resolve_gate("confidence-threshold"))
    greedy = RouterContext(temperature=0.0, seed=0)
    graph.batch([InputState(question=q) for q in questions[:batch]], {"max_concurrency": batch}, context=greedy)  # warm-up
    for t in timed:
        t.durations.clear()
    engine_calls = getattr(tiers[0], "batch_sizes", None)  # the vLLM engine counts its iterations by batch size
    if engine_calls is not None:
        engine_calls.clear()
    steps, started = 0, time.perf_counter()
    for first in range(0, len(questions), batch):
        chunk = [InputState(question=q) for q in questions[first : first + batch]]
        for result in graph.batch(chunk, {"max_concurrency": batch}, context=greedy):
            steps += len(result["steps"])
    wall = time.perf_counter() - started
    latencies = sorted(d for t in timed for d in t.durations)
    return {
        "batch": batch,
        "problems": len(questions),
        "steps": steps,
        "model_calls": len(latencies),
        "wall_seconds": round(wall, 3),
        "steps_per_second": round(steps / wall, 2),
        "call_latency_ms_mean": round(1000 * statistics.fmean(latencies), 2),
        "call_latency_ms_p50": round(1000 * statistics.median(latencies), 2),
        "call_latency_ms_p90": round(1000 * latencies[int(0.9 * (len(latencies) - 1))], 2),
        "draft_engine_batch_mean": round(sum(n * k for n, k in engine_calls.items()) / sum(engine_calls.values()), 2)
        if engine_calls else None,
    }


def run_throughput(n_problems: int = 32, batches: Sequence[int] = (1, 16), backends: Sequence[str] = BACKENDS,
                   seed: int = 0) -> list[dict]:
    """One row per (backend, batch), with steps/s relative to the first backend at the first batch size."""
    questions = [p.question for p in testbed_task().generate("test", n_problems, seed=seed)]
    rows: list[dict] = []
    for backend in backends:
        tiers = load_pair(backend)
        try:
            rows += [{"backend": backend, **measure(tiers, questions, batch)} for batch in batches]
        finally:
            close_pair(tiers)
    for row in rows:
        row["speedup"] = round(row["steps_per_second"] / rows[0]["steps_per_second"], 2)
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    columns = ["backend", "batch", "steps", "wall_seconds", "steps_per_second", "speedup",
               "call_latency_ms_mean", "call_latency_ms_p50", "call_latency_ms_p90", "draft_engine_batch_mean"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
