"""Which tiers an artifact was trained or calibrated on, and the check that it is used over them.

A policy's threshold carries its coverage only to the models it was calibrated with, so a gate
artifact records its tiers (name and parameter count, plus backend kind and reported features
where a run spec knows them) and is compared with the tiers it routes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from stepgraph.errors import PolicyFileError
from stepgraph.models.base import StepModel


def describe(tiers: Sequence[StepModel]) -> list[dict[str, Any]]:
    """Name and parameters of each tier (what an artifact is compared on)."""
    return [{"name": t.name, "parameters": t.n_params} for t in tiers]


def _fmt(tiers: Sequence[Mapping[str, Any]]) -> str:
    def one(t: Mapping[str, Any]) -> str:
        extra = [f"{t['parameters']:,} params" if t.get("parameters") else "", t.get("backend", ""),
                 "reports " + "+".join(t["features"]) if t.get("features") else ""]
        return f"{t.get('name')} ({', '.join(e for e in extra if e)})"

    return " < ".join(one(t) for t in tiers)


def check_tiers(recorded: Sequence[Mapping[str, Any]] | None, current: Sequence[Mapping[str, Any]], where: str,
                allow_other_tiers: bool = False) -> None:
    """Refuse (or, when allowed, warn about) an artifact trained on other tiers than these.

    Other parameter counts or another number of tiers refuse; another name with the same size
    (a model served under another name) warns. An artifact without recorded tiers passes.

    Raises:
        PolicyFileError: the tiers differ in number or size and ``allow_other_tiers`` is False.
    """
    if not recorded:
        return
    sizes_differ = len(recorded) != len(current) or any(
        r.get("parameters") and c.get("parameters") and r["parameters"] != c["parameters"] for r, c in zip(recorded, current))
    names_differ = any(r.get("name") != c.get("name") for r, c in zip(recorded, current))
    if not sizes_differ and not names_differ:
        return
    message = (f"{where} was calibrated on the tiers {_fmt(recorded)}, but this run's tiers are {_fmt(current)}; "
               "its threshold does not carry its coverage to other models.")
    if sizes_differ and not allow_other_tiers:
        raise PolicyFileError(message + " Collect and train/calibrate on these tiers, or pass --allow-other-tiers "
                              "(gate.allow_other_tiers = true; build_graph(..., allow_other_tiers=True)) to use it anyway.")
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def allow_other_tiers(gate: Any) -> Any:
    """Mark a gate whose tiers were checked and explicitly allowed, so ``build_graph`` does not refuse or warn again."""
    gate.allow_other_tiers = True
    return gate


def recorded_tiers(gate: object) -> list[dict[str, Any]] | None:
    """The tiers a gate's artifact records (a policy's ``models.tiers``), or None for a gate without one."""
    artifact = getattr(gate, "artifact", None)
    models = getattr(artifact, "models", None)
    return models.get("tiers") if isinstance(models, Mapping) else None
