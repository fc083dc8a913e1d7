"""The observations the legacy-format test decides on: deterministic, spread widely around each artifact's normalisation."""

import random
from collections.abc import Sequence


def observations(names: Sequence[str], mean: Sequence[float], std: Sequence[float], n: int = 200) -> list[dict[str, float | None]]:
    """``n`` observations: feature i is mean_i + std_i · z, z ~ N(0, s²) with s in {0.5, 1, 2, 4}; every 25th has no values."""
    rng = random.Random(2025)
    out: list[dict[str, float | None]] = []
    for i in range(n):
        spread = (0.5, 1.0, 2.0, 4.0)[i % 4]
        out.append({name: None if i % 25 == 0 else m + s * rng.gauss(0.0, spread) for name, m, s in zip(names, mean, std)})
    return out
