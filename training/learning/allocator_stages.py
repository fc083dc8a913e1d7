"""The allocator stages that the 2-tier (``allocator``) and K-tier (``allocator_tiers``, ``cpo_tiers``) trainings share.

A module of its own so that those import it and not each other.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from stepgraph.training.data.records import Episode
from stepgraph.training.learning.cpo import column_statistics

from stepgraph.artifacts.policy import kappa_from_probability
from stepgraph.routing.allocator import ALLOCATOR_SCHEMA, PriorStep, allocator_observation
from stepgraph.routing.learned_allocator import AllocatorNetwork


def episode_observations(episode: Episode) -> list[dict[str, float | None]]:
    """The allocator's observation before each recorded step (the prefix the behaviour kept)."""
    prior: list[PriorStep] = []
    rows = []
    for step in episode.steps:
        rows.append(allocator_observation(episode.question, prior))
        prior.append(PriorStep(tier=step.action, draft_observation=step.observation))
    return rows


def normalisation(rows: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[str]]:
    """Per-feature mean and std over the rows (NaN = not reported); never-reported features are ignored."""
    return column_statistics(rows, ALLOCATOR_SCHEMA.names)


def supervised_stage(network: AllocatorNetwork, x: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float) -> list[float]:
    """Cross-entropy on the cheapest-accepted-tier labels, full batch; returns the loss per epoch."""
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(network(x), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def keep_cheaper_stage(network: torch.nn.Module, supervised_weights: dict[str, Any], calibrate: Callable[[], dict[str, Any]]
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibrate the RL-refined weights (loaded) and the supervised ones; load the cheaper at the coverage bound.

    Returns the chosen calibration and the training summary's calibration fields.
    """
    by_stage = {"rl": (copy.deepcopy(network.state_dict()), calibrate())}
    network.load_state_dict(supervised_weights)
    by_stage["supervised"] = (supervised_weights, calibrate())
    # The RL refinement is kept only where it calibrates cheaper (met coverage first, then FLOPs).
    stage = min(by_stage, key=lambda k: (not by_stage[k][1]["met"], by_stage[k][1]["flops_vs_target"]))
    weights, chosen = by_stage[stage]
    network.load_state_dict(weights)
    summary = {"selected_stage": stage, "calibration_by_stage": {k: v[1] for k, v in by_stage.items()},
               "calibrated_kappa": kappa_from_probability(chosen["kappa"]), "calibration_surrogate_miss": chosen["misses"] / chosen["episodes"],
               "calibration_met": chosen["met"], "calibration_flops_vs_target": chosen["flops_vs_target"],
               **{f"calibration_{k}": chosen[k] for k in ("sent_up", "none_sent_up", "allocated_share") if k in chosen}}
    return chosen, summary
