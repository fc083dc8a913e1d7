"""Deterministic train / calibration / test splits by a hash of each question.

A question's split depends on its text and the salt, never on the file's order. With fractions,
each question falls in the split its hash (read as a number u in [0, 1)) lands in, so a data file
that grows keeps every old question where it was. With sizes, the questions are ordered by hash
and consecutive runs are cut. No question is in two splits; duplicated questions count once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from stepgraph.training.data.records import Item

from stepgraph.errors import ConfigError

SPLITS = ("train", "calibration", "test")


def question_hash(question: str, seed: int = 0) -> float:
    """The question's position in [0, 1), fixed by its text and the salt."""
    digest = hashlib.sha256(f"{seed}:{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_items(items: Sequence[Item], sizes: Mapping[str, float], seed: int = 0) -> dict[str, list[Item]]:
    """Cut the items into train, calibration and test.

    Args:
        items: the whole data set.
        sizes: per split, all counts (integers ≥ 1) or all fractions of the data set (< 1);
            absent splits are empty.
        seed: salt of the hash: another seed, another split.

    Raises:
        ConfigError: the sizes ask for more questions than the data holds.
    """
    unique = sorted({item.question: item for item in items}.values(), key=lambda item: question_hash(item.question, seed))
    out: dict[str, list[Item]] = {name: [] for name in SPLITS}
    if all(0 <= v < 1 for v in sizes.values()):
        edges, low = [], 0.0
        for name in SPLITS:
            edges.append((name, low, low + sizes.get(name, 0.0)))
            low += sizes.get(name, 0.0)
        for item in unique:
            u = question_hash(item.question, seed)
            for name, lo, hi in edges:
                if lo <= u < hi:
                    out[name].append(item)
        return out
    counts = {name: int(sizes.get(name, 0)) for name in SPLITS}
    if sum(counts.values()) > len(unique):
        raise ConfigError(f"data.splits asks for {sum(counts.values())} questions ({counts}) but the data holds {len(unique)} distinct ones.")
    start = 0
    for name in SPLITS:
        out[name] = unique[start : start + counts[name]]
        start += counts[name]
    return out
