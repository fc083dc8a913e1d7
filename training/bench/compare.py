"""Paired comparisons of two methods run on the same problems and seeds: cost difference and misses.

Rows are paired by ``(problem_id, seed)``: the same problem answered with the same sampling seed,
so per-problem difficulty cancels. The cost difference gets a paired percentile bootstrap 95%
interval (resampling pairs); misses (``covered == 0``) get McNemar's exact test, a two-sided
binomial test on the discordant pairs (no scipy needed: a few lines of ``math.comb``).

Example:
    >>> mcnemar([1, 1, 0, 0], [0, 0, 0, 0])["p_value"]
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a − b`` over pairs and its percentile bootstrap 95% interval (pairs resampled together)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_bootstrap needs two equally long, non-empty samples, got {len(a)} and {len(b)}.")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(diff.mean()), float(low), float(high)


def mcnemar(miss_a: Sequence[float], miss_b: Sequence[float]) -> dict[str, float]:
    """McNemar's exact test: ``only_a`` pairs missed by a alone, ``only_b`` by b alone, two-sided p-value."""
    if len(miss_a) != len(miss_b):
        raise ValueError(f"mcnemar needs paired samples, got {len(miss_a)} and {len(miss_b)}.")
    only_a = sum(1 for x, y in zip(miss_a, miss_b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(miss_a, miss_b, strict=True) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n  # P(X ≤ k), X ~ Binomial(n, 1/2)
    return {"only_a": float(only_a), "only_b": float(only_b), "p_value": min(1.0, 2.0 * tail)}


def compare(rows: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], *, metric: str = "flops",
            seed: int = 0) -> dict[str, Any]:
    """``rows`` against ``reference`` (e.g. a baseline against the policy), paired by problem and seed.

    Returns the mean difference of ``metric`` with its paired 95% interval, the ratio of means, and
    McNemar on misses (``only_a``: missed by ``rows`` alone; ``only_b``: by ``reference`` alone).

    Raises:
        ValueError: the two runs do not hold the same (problem, seed) pairs.
    """
    by_key = {(r["problem_id"], r.get("seed")): r for r in reference}
    keys = [(r["problem_id"], r.get("seed")) for r in rows]
    if len(by_key) != len(rows) or set(keys) != set(by_key):
        raise ValueError("compare needs both runs on the same problems and seeds (paired rows).")
    paired = [by_key[k] for k in keys]
    mean, low, high = paired_bootstrap([float(r[metric]) for r in rows], [float(r[metric]) for r in paired], seed=seed)
    reference_mean = sum(float(r[metric]) for r in paired) / len(paired)
    return {
        "metric": metric, "diff": mean, "low": low, "high": high,
        "ratio": (reference_mean + mean) / reference_mean if reference_mean else math.nan,
        "mcnemar": mcnemar([1.0 - float(r["covered"]) for r in rows], [1.0 - float(r["covered"]) for r in paired]),
    }
