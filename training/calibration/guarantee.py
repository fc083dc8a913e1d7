"""What coverage a trained policy may claim, from its calibration episodes.

Split-conformal calibration (``cpo.calibrate_kappa``) accepts κ when the misses on n held-out
episodes are at most ⌊α(n + 1)⌋ − 1. With fewer than ``episodes_needed(α)`` episodes that bound
is negative: no κ, not even 0, can meet it, and the artifact must not claim the guarantee. The
verdict goes into the artifact's manifest as ``guarantee`` so that readers see what holds.
"""

from __future__ import annotations

import math
from typing import Any


def allowed_misses(alpha: float, n: int) -> int:
    """⌊α(n + 1)⌋ − 1: the misses split-conformal calibration allows on n episodes (negative: none can pass)."""
    return math.floor(alpha * (n + 1)) - 1


def episodes_needed(alpha: float) -> int:
    """The fewest calibration episodes for which ``allowed_misses`` is not negative."""
    n = max(0, math.ceil(1 / alpha) - 2)
    while allowed_misses(alpha, n) < 0:
        n += 1
    return n


def calibration_guarantee(alpha: float, n_calibration: int, misses: int | None = None) -> dict[str, Any]:
    """The manifest's ``guarantee``: split-conformal coverage 1 − α, or ``none`` with the reason.

    Args:
        alpha: the allowed miss rate.
        n_calibration: held-out calibration episodes.
        misses: surrogate misses of the calibrated κ on them (None: not calibrated yet).
    """
    needed = episodes_needed(alpha)
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
    if misses is not None and misses > allowed_misses(alpha, n_calibration):
        return {
            "type": "none",
            "reason": f"even κ = 0 (escalate every step) misses {misses} of {n_calibration} calibration episodes, more "
                      f"than the {allowed_misses(alpha, n_calibration)} that alpha={alpha} allows: the strongest tier's "
                      "steps themselves fail the verifier. Raise --alpha or use stronger models.",
            "calibration_episodes": n_calibration,
        }
    return {"type": "split-conformal", "coverage": 1 - alpha, "calibration_episodes": n_calibration}
