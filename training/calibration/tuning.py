"""Exact threshold tuning of score-based gates on calibration problems.

A score-based gate escalates a step when its threshold ``t`` passes the step's *critical value*
(the confidence for a confidence threshold, the reward for RSD, the judge's acceptance for
SpecReason, the score for STEER and the policy). Seeds are fixed per problem and step, so one
problem's run depends on ``t`` only through its decisions: a run at ``t`` is the run for every
``t`` between the nearest critical values it met below and above ``t``. Sweeping each problem
from piece to piece therefore gives its outcome at *every* threshold, exactly, with one run per
piece; summed over problems this is the coverage/cost curve at every breakpoint (a threshold at
which some calibration decision changes), and a grid (the paper's 0.1 grid) is read off the same
curve. Pieces are half-open ``(lo, hi]``: ``t == hi`` is inside, as the gates compare.

Example:
    >>> pieces = sweep_problem(lambda t: ({"covered": float(t > 0.5), "flops": 1.0 + (t > 0.5)}, [0.5]), start=0.9)
    >>> [(p.lo, p.hi) for p in pieces]
    [(-inf, 0.5), (0.5, inf)]
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from stepgraph.training.calibration.guarantee import allowed_misses, calibration_guarantee
from stepgraph.training.collection.collect import Item
from stepgraph.training.collection.runs import add_coverage, answer_item, run_seed
from tqdm import tqdm

from stepgraph.context import RouterContext
from stepgraph.graph import build_graph
from stepgraph.models.base import StepModel
from stepgraph.models.costs import Prices
from stepgraph.routing.gates.base import Gate, GateDecision, GateInput
from stepgraph.routing.gates.simple import FeatureRuleGate

MAX_PROBES_PER_PROBLEM = 400
"""A problem whose sweep needs more runs than this stops there (recorded); never reached on the testbed."""


@dataclass(frozen=True)
class Tunable:
    """A family of gates indexed by one threshold.

    Attributes:
        make: the gate at threshold ``t`` (any finite ``t``; the sweep probes past the score range).
        critical: a decided step's critical value ``c`` given the threshold it ran under; None when the
            decision does not depend on the threshold (a non-finite score, the last tier). Without it
            (``None``), every decision's finite score is a critical value, also the second decision on
            a step a K-tier gate sent up (gates that escalate iff ``score >= t``).
        start: where each problem's sweep starts (any finite threshold).
        grid: the paper's grid for this method.
        scale: the width below which two critical values count as one (relative to ``max(|c|, scale)``).
    """

    make: Callable[[float], Gate]
    critical: Callable[[Mapping[str, Any], float], float | None] | None
    start: float
    grid: Sequence[float]
    scale: float = 1.0


def critical_of_score(step: Mapping[str, Any], threshold: float) -> float | None:
    """Gates that escalate iff ``score >= t`` (STEER, the policy): the score itself."""
    score = step.get("gate_score")
    return None if step.get("gate_reason") or score is None or not math.isfinite(score) else float(score)


def critical_below(step: Mapping[str, Any], threshold: float) -> float | None:
    """Gates that escalate iff a value is below ``t`` and score ``t − value`` (RSD, SpecReason): the value."""
    score = critical_of_score(step, threshold)
    return None if score is None else threshold - score


def critical_feature(feature: str) -> Callable[[Mapping[str, Any], float], float | None]:
    """A confidence threshold on ``feature``: the step's confidence itself, read exactly from its observation."""

    def critical(step: Mapping[str, Any], threshold: float) -> float | None:
        value = (step.get("observation") or {}).get(feature)
        return None if step.get("gate_reason") or value is None or not math.isfinite(value) else float(value)

    return critical


def critical_unless_rule(rule: FeatureRuleGate) -> Callable[[Mapping[str, Any], float], float | None]:
    """A hand rule with a confidence threshold (``rule``, any of its thresholds): the confidence, unless the rule's own
    features fired (``FeatureRuleGate.fired``; then the step escalates at every threshold)."""
    confidence = critical_feature(rule.confidence_feature)

    def critical(step: Mapping[str, Any], threshold: float) -> float | None:
        return None if rule.fired(step.get("observation") or {}) else confidence(step, threshold)

    return critical


@dataclass(frozen=True)
class Piece:
    """One problem's run, valid for every threshold in ``(lo, hi]``."""

    lo: float
    hi: float
    row: dict[str, Any]


def piece_of(threshold: float, criticals: Sequence[float], row: dict[str, Any]) -> Piece:
    """The interval of thresholds around ``threshold`` that leave every decision of this run unchanged."""
    lo = max((c for c in criticals if c < threshold), default=-math.inf)
    hi = min((c for c in criticals if c >= threshold), default=math.inf)
    return Piece(lo, hi, row)


def _past(c: float, direction: int, scale: float) -> float:
    """A threshold just past critical value ``c``: far enough to clear rounding, too close to skip another value."""
    return c + direction * 1e-9 * max(abs(c), scale)


def sweep_problem(run: Callable[[float], tuple[dict[str, Any], list[float]]], start: float, scale: float = 1e-300,
                  max_probes: int = MAX_PROBES_PER_PROBLEM) -> list[Piece]:
    """Every piece of one problem's threshold axis, by running it once per piece (``run(t)`` gives row and criticals).

    The result is sorted and covers the whole axis unless ``max_probes`` runs were not enough (then the
    last piece found on each side is extended to infinity by the caller's lookup).
    """
    def probe(t: float) -> Piece:
        row, criticals = run(t)
        return piece_of(t, criticals, row)

    first = probe(start)
    pieces, probes = [first], 1
    for direction in (1, -1):
        piece = first
        while probes < max_probes:
            edge = piece.hi if direction > 0 else piece.lo
            if math.isinf(edge):
                break
            piece = probe(_past(edge, direction, scale))
            probes += 1
            pieces.append(piece)
    return sorted(pieces, key=lambda p: p.hi)


def sweep(tiers: Sequence[StepModel], tunable: Tunable, items: Sequence[Item], target_rows: Sequence[Mapping[str, Any]], *,
          seed: int, context: RouterContext | None = None, prices: Sequence[Prices] | None = None, concurrency: int = 1,
          desc: str = "", progress: bool = False) -> list[list[Piece]]:
    """``sweep_problem`` for every item (seeds as in ``runs.run_gate``), with coverage against ``target_rows``.

    ``concurrency`` problems are swept at once on threads (served models answer in parallel), each
    thread with its own compiled graph whose gate it swaps between its runs.
    """
    base = context or RouterContext()
    local = threading.local()

    def sweep_one(index: int) -> list[Piece]:
        if not hasattr(local, "graph"):
            local.holder = _Swappable(tunable.make(tunable.start))
            local.graph = build_graph(tiers, local.holder, prices=prices)
        item, target = items[index], target_rows[index]
        ctx = RouterContext(**{**vars(base), "seed": run_seed(seed, index)})

        def run(t: float) -> tuple[dict[str, Any], list[float]]:
            local.holder.inner, local.holder.scores = tunable.make(t), []
            row, state = answer_item(local.graph, item, ctx, len(tiers))
            add_coverage([row], [target])
            if tunable.critical is None:
                return row, [s for s in local.holder.scores if s is not None and math.isfinite(s)]
            return row, [c for step in state["steps"] if (c := tunable.critical(step, t)) is not None]

        return sweep_problem(run, tunable.start, tunable.scale)

    if len(items) != len(target_rows):
        raise ValueError(f"sweep needs one target row per item, got {len(target_rows)} for {len(items)}.")
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(tqdm(pool.map(sweep_one, range(len(items))), total=len(items), desc=desc, disable=not progress, leave=False))


class _Swappable(Gate):
    """One compiled graph for many probes: the gate it asks is swapped between runs (one thread's runs are
    sequential). It notes every decision's score, the critical values of a ``Tunable`` without ``critical``."""

    name = "swappable"

    def __init__(self, inner: Gate) -> None:
        self.inner = inner
        self.scores: list[float | None] = []

    def score(self, x: GateInput) -> float:
        return self.inner.score(x)

    def decide(self, x: GateInput) -> GateDecision:
        decision = self.inner.decide(x)
        self.scores.append(None if decision.reason else decision.score)  # a decision with a reason ignores t
        return decision


def rows_at(problems: Sequence[Sequence[Piece]], threshold: float) -> list[dict[str, Any]]:
    """Each problem's run at ``threshold`` (the piece holding it)."""
    return [pieces[min(bisect.bisect_left([p.hi for p in pieces], threshold), len(pieces) - 1)].row for pieces in problems]


def evaluate(problems: Sequence[Sequence[Piece]], thresholds: Sequence[float]) -> list[dict[str, float]]:
    """Mean coverage, generated FLOPs and escalation rate over problems at each threshold."""
    curve = []
    for t in thresholds:
        rows = rows_at(problems, t)
        curve.append({"threshold": t, **{k: sum(float(r[k]) for r in rows) / len(rows) for k in ("covered", "flops", "escalation_rate")}})
    return curve


def breakpoint_thresholds(problems: Sequence[Sequence[Piece]], scale: float = 1e-300) -> list[float]:
    """One threshold inside every interval between consecutive breakpoints of the summed curve (the ends included)."""
    edges = sorted({p.hi for pieces in problems for p in pieces if math.isfinite(p.hi)})
    if not edges:
        return [0.0]
    inside = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    below = edges[0] - max(abs(edges[0]), scale)
    above = edges[-1] + max(abs(edges[-1]), scale)
    return [below, *inside, above]


def cheapest(curve: Sequence[Mapping[str, float]], min_coverage: float) -> dict[str, float]:
    """The cheapest point with coverage ≥ ``min_coverage``; none: the highest coverage, then the cheapest."""
    feasible = [p for p in curve if p["covered"] >= min_coverage - 1e-12]
    if feasible:
        return dict(min(feasible, key=lambda p: (p["flops"], -p["covered"])))
    return dict(max(curve, key=lambda p: (p["covered"], -p["flops"])))


def cheapest_rows(problems: Sequence[Sequence[Piece]], min_coverage: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The cheapest breakpoint with coverage ≥ ``min_coverage`` on these swept problems (``cheapest``), and each
    problem's run there: a threshold chosen on the runs it is scored on, so a point of the cost/coverage frontier."""
    point = cheapest(evaluate(problems, breakpoint_thresholds(problems)), min_coverage)
    return point, rows_at(problems, point["threshold"])


def calibrate_on_runs(problems: Sequence[Sequence[Piece]], alpha: float, delta: float | None = None) -> dict[str, Any]:
    """Split-conformal calibration on live runs: a threshold whose misses on the ``n`` swept calibration
    problems are at most ⌊α(n + 1)⌋ − 1 (``guarantee.allowed_misses``; with ``delta`` the PAC bound), for
    gates that escalate iff ``score >= t``.

    The thresholds are tried in a fixed order from the safe side (the lowest, escalating the most) up,
    and the last one before the first too many misses is kept, so a lucky threshold past a failing one
    is never picked. Runs, unlike replayed traces, see what the gate's own choices lead to (a
    replayed episode after an escalation the behaviour did not make is only a surrogate), so this
    holds for K-tier gates too. Returns the threshold, its calibration point and the guarantee.
    """
    n = len(problems)
    allowed = allowed_misses(alpha, n, delta)
    curve = evaluate(problems, breakpoint_thresholds(problems))  # ascending thresholds: escalating the most first
    chosen = curve[0]
    for point in curve:
        if round((1.0 - point["covered"]) * n) > allowed:
            break
        chosen = point
    misses = round((1.0 - chosen["covered"]) * n)
    return {"threshold": chosen["threshold"], "calibration": {**chosen, "misses": misses, "problems": n},
            "guarantee": calibration_guarantee(alpha, n, misses, delta)}
