"""Latency and throughput of a running ``stepgraph serve`` at several client counts.

Each client sends its share of the requests one after another (testbed test-split questions);
a row reports p50/p95 latency of the answered requests, requests per second over the wall
time, and how many were refused (429) or failed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any


async def _measure(url: str, api_key: str | None, model: str, clients: int, requests: int,
                   questions: list[str]) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    latencies: list[float] = []
    refused = failed = 0

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal refused, failed
        for i in range(index, requests, clients):
            body = {"model": model, "messages": [{"role": "user", "content": questions[i % len(questions)]}]}
            start = time.perf_counter()
            response = await http.post(url.rstrip("/") + "/v1/chat/completions", json=body, headers=headers)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            elif response.status_code == 429:
                refused += 1
            else:
                failed += 1

    async with httpx.AsyncClient(timeout=600) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - start
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")
    return {"clients": clients, "requests": requests, "answered": len(latencies), "refused": refused,
            "failed": failed, "p50_s": statistics.median(ordered) if ordered else float("nan"), "p95_s": p95,
            "requests_per_s": len(latencies) / wall, "wall_s": wall}


def run_serve_bench(url: str, *, clients: list[int], requests: int, api_key: str | None = None,
                    model: str = "stepgraph", seed: int = 0) -> list[dict[str, Any]]:
    """One row per client count."""
    from stepgraph.testbed import testbed_task

    questions = [p.question for p in testbed_task().generate("test", 32, seed=seed)]
    return [asyncio.run(_measure(url, api_key, model, n, requests, questions)) for n in clients]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| clients | requests | answered | 429 | failed | p50 (s) | p95 (s) | requests/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['answered']} | {r['refused']} | {r['failed']} | "
                     f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['requests_per_s']:.2f} |")
    return "\n".join(lines)
