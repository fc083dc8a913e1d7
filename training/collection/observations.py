"""Recompute a stored episode's observations with this stepgraph's feature schema.

Traces keep each draft's StepOutput (``StepRecord.draft_output``; with more than two tiers, every
tier's in ``StepRecord.tiers``), the question and the steps the routed answer kept, so the features
of a newer schema can be computed from traces collected before it, exactly as the graph (and
``tier_traces.tier_table``) would compute them (``stepgraph.features.observe``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stepgraph.training.collection.tier_traces import tier_observation
from stepgraph.training.data.records import Episode

from stepgraph.errors import ConfigError
from stepgraph.features import observe
from stepgraph.models.base import StepOutput


def reobserve(episode: Episode) -> Episode:
    """The episode with every step's observation recomputed, the tier table's too; a step (or tier entry) without
    its output keeps the stored one."""
    steps: list = []
    prior: list[str] = []
    escalations = 0
    previous: dict[str, object] | None = None
    for record in episode.steps:
        observation = record.observation
        stored = observation.get("escalations")  # the graph's own count: one step may escalate past several tiers
        escalations = int(stored) if isinstance(stored, (int, float)) else escalations
        if record.draft_output is not None:
            observation = observe(StepOutput.from_dict(record.draft_output), step_index=record.index, escalations=escalations,
                                  difficulty=record.observation.get("difficulty"), question=episode.question,
                                  prior_steps=prior, previous=previous)
        tiers = None if record.tiers is None else [
            entry if entry.get("output") is None else {**entry, "observation": tier_observation(
                StepOutput.from_dict(entry["output"]), entry["tier"], question=episode.question, prior=prior,
                escalations=escalations, difficulty=entry["observation"].get("difficulty"))}
            for entry in record.tiers]
        steps.append(dataclasses.replace(record, observation=observation, tiers=tiers))
        kept = record.escalated if record.action and record.escalated is not None else record.draft
        prior.append(kept)
        escalations += record.action
        previous = {"observation": observation, "escalated": bool(record.action)}
    return dataclasses.replace(episode, steps=steps)


def reobserve_store(store: str | Path, out: str | Path) -> dict[str, object]:
    """Copy ``store`` into the new store ``out`` with every episode's observations recomputed; what it wrote."""
    from stepgraph.training.data.store import TraceStore

    from stepgraph.features import FEATURE_SCHEMA

    with TraceStore(store, readonly=True) as old, TraceStore(out) as new:
        if len(new):
            raise ConfigError(f"{out} already holds episodes; pass a new --out path.")
        new.set_meta("feature_schema", FEATURE_SCHEMA.to_dict())
        new.set_meta("models", old.meta("models"))
        for split in ("train", "calibration", "test"):
            for episode in old.episodes(split):
                new.add(reobserve(episode), split)
        return {"out": str(out), "episodes": len(new), "feature_schema": str(FEATURE_SCHEMA)}


if __name__ == "__main__":  # the old path of `stepgraph reobserve`
    from stepgraph.cli import run_old_path
    run_old_path(__spec__.name, "reobserve")
