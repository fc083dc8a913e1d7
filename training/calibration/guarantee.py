"""What coverage a trained policy may claim, from its calibration episodes.

Split-conformal calibration (``cpo.calibrate_kappa``) accepts κ when the misses on n held-out
episodes are at most ⌊α(n + 1)⌋ − 1: coverage 1 − α on average over calibration sets, so one
calibration set may leave a router a little below it. With ``delta`` (live runs,
``calibrate --runs N --delta D``) the bound is the PAC one instead: at most the misses k with
P(Binomial(n, α) ≤ k) ≤ δ, so that a threshold whose true miss rate exceeds α passes with probability
at most δ (thresholds are tested in a fixed order from the safe side and the sweep stops at the
first failure, so this holds for the one kept): coverage ≥ 1 − α with probability ≥ 1 − δ. With
fewer than ``episodes_needed(α)`` episodes either bound is negative: no κ, not even 0, can meet it,
and the artifact must not claim the guarantee. The verdict goes into the artifact's manifest as
``guarantee`` so that readers see what holds.
"""

from __future__ import annotations

import math
from typing import Any


def allowed_misses(alpha: float, n: int, delta: float | None = None) -> int:
    """The misses calibration allows on n episodes (negative: none can pass): ⌊α(n + 1)⌋ − 1 (split conformal), or
    with ``delta`` the largest k with P(Binomial(n, α) ≤ k) ≤ δ (PAC)."""
    if delta is None:
        return math.floor(alpha * (n + 1)) - 1
    if not 0.0 < alpha < 1.0:  # a degenerate Binomial: all its mass at 0 misses, or at n
        return -1 if alpha <= 0.0 else n - 1
    k, tail = -1, 0.0
    while k < n:
        tail += _binomial_pmf(n, k + 1, alpha)
        if tail > delta:
            break
        k += 1
    return k


def _binomial_pmf(n: int, k: int, p: float) -> float:
    """P(Binomial(n, p) = k), in log space: C(n, k) alone overflows a float past n ≈ 1,030 (1,600 runs did)."""
    log_comb = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return math.exp(log_comb + k * math.log(p) + (n - k) * math.log1p(-p))


def episodes_needed(alpha: float, delta: float | None = None) -> int:
    """The fewest calibration episodes for which ``allowed_misses`` is not negative."""
    n = max(0, math.ceil(1 / alpha) - 2) if delta is None else 1
    while allowed_misses(alpha, n, delta) < 0:
        n += 1
    return n


def calibration_guarantee(alpha: float, n_calibration: int, misses: int | None = None,
                          delta: float | None = None) -> dict[str, Any]:
    """The manifest's ``guarantee``: split-conformal coverage 1 − α (with ``delta``: PAC, coverage 1 − α with
    probability 1 − δ), or ``none`` with the reason.

    Args:
        alpha: the allowed miss rate.
        n_calibration: held-out calibration episodes.
        misses: surrogate misses of the calibrated κ on them (None: not calibrated yet).
        delta: the PAC bound's failure probability (None: split conformal).
    """
    needed = episodes_needed(alpha, delta)
    if n_calibration < needed:
        found = "no calibration episodes" if n_calibration == 0 else f"only {n_calibration} calibration episodes"
        return {
            "type": "none",
            "reason": f"{found}; a coverage guarantee at alpha={alpha} needs at least {needed}. κ is the online κ "
                      f"from training, which holds no finite-sample guarantee. Collect more "
                      f"(`stepgraph collect --split calibration --problems {needed}`) and train again.",
            "calibration_episodes": n_calibration,
            "calibration_episodes_needed": needed,
        }
    allowed = allowed_misses(alpha, n_calibration, delta)
    if misses is not None and misses > allowed:
        return {
            "type": "none",
            "reason": f"even κ = 0 (escalate every step) misses {misses} of {n_calibration} calibration episodes, more "
                      f"than the {allowed} that alpha={alpha} allows: the strongest tier's "
                      "steps themselves fail the verifier. Raise --alpha or use stronger models.",
            "calibration_episodes": n_calibration,
        }
    if delta is not None:
        return {"type": "pac", "coverage": 1 - alpha, "confidence": 1 - delta, "calibration_episodes": n_calibration}
    return {"type": "split-conformal", "coverage": 1 - alpha, "calibration_episodes": n_calibration}
