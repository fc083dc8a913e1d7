"""The allocator's stages that the 2-tier (``allocator``) and K-tier (``allocator_tiers``) trainings share.

A module of its own so that those import it and not each other.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from stepgraph.training.calibration.guarantee import calibration_guarantee
from stepgraph.training.data.records import Episode
from stepgraph.training.learning.cpo import CPOArgs, Run, column_statistics, supervised_stage

from stepgraph.artifacts.policy import kappa_from_probability
from stepgraph.routing.allocator import ALLOCATOR_SCHEMA, PriorStep, allocator_observation
from stepgraph.routing.learned_allocator import AllocatorArtifact, AllocatorNetwork


def episode_observations(episode: Episode) -> list[dict[str, float | None]]:
    """The allocator's observation before each recorded step (the prefix the behaviour kept)."""
    prior: list[PriorStep] = []
    rows = []
    for step in episode.steps:
        rows.append(allocator_observation(episode.question, prior))
        prior.append(PriorStep(tier=step.action, draft_observation=step.observation))
    return rows


def new_allocator(episodes: Sequence[Episode], args: CPOArgs, tiers: Sequence[dict[str, Any]]) -> AllocatorArtifact:
    """Seed torch, then the untrained allocator over ``tiers``, its features normalised over the episodes' observations
    (never-reported features are ignored)."""
    torch.manual_seed(args.seed)
    rows = [ALLOCATOR_SCHEMA.vector(o) for e in episodes for o in episode_observations(e)]
    mean, std, ignored = column_statistics(rows, ALLOCATOR_SCHEMA.names)
    network = AllocatorNetwork(len(ALLOCATOR_SCHEMA.names), len(tiers), args.hidden, args.layers)
    return AllocatorArtifact(network, kappa_from_probability(args.kappa_init), args.alpha, [dict(t) for t in tiers], mean, std, args.hidden,
                             args.layers, ignored=ignored)


def supervised(network: AllocatorNetwork, x: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The supervised stage on the cheapest-accepted-tier labels; returns its weights and its training summary fields."""
    losses = supervised_stage(network, x, labels, epochs, lr)
    with torch.no_grad():
        accuracy = float((network(x).argmax(-1) == labels).float().mean())
    return copy.deepcopy(network.state_dict()), {
        "supervised_epochs": epochs, "supervised_lr": lr, "supervised_final_loss": losses[-1] if losses else None,
        "supervised_accuracy": accuracy, "label_share": [float((labels == k).float().mean()) for k in range(network.n_tiers)]}


def calibration_stage(run: Run, supervised_weights: dict[str, Any], calibration: Sequence[Episode],
                      calibrator: Callable[[list[Episode]], Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """Set the artifact's κ and guarantee; returns the training summary's calibration fields.

    Without held-out episodes κ is the RL stage's online κ, with no guarantee. With them,
    ``calibrator(held_out)()`` calibrates the loaded weights; the RL-refined and the supervised
    weights are both calibrated and the cheaper at the coverage bound is kept (met coverage first,
    then FLOPs), with split conformal's guarantee.
    """
    artifact, network, alpha = run.artifact, run.policy, run.args.alpha
    network.eval()
    artifact.kappa = kappa_from_probability(run.kappa)  # the replays' probability κ, as the artifact's log-odds
    held_out = [e for e in calibration if e.steps]
    if not held_out:
        artifact.guarantee = calibration_guarantee(alpha, 0)
        return {}
    calibrate = calibrator(held_out)
    by_stage = {"rl": (copy.deepcopy(network.state_dict()), calibrate())}
    network.load_state_dict(supervised_weights)
    by_stage["supervised"] = (supervised_weights, calibrate())
    stage = min(by_stage, key=lambda k: (not by_stage[k][1]["met"], by_stage[k][1]["flops_vs_target"]))
    weights, chosen = by_stage[stage]
    network.load_state_dict(weights)
    artifact.kappa = kappa_from_probability(chosen["kappa"])
    artifact.guarantee = calibration_guarantee(alpha, len(held_out), chosen["misses"])
    return {"selected_stage": stage, "calibration_by_stage": {k: v[1] for k, v in by_stage.items()},
            "calibrated_kappa": kappa_from_probability(chosen["kappa"]), "calibration_surrogate_miss": chosen["misses"] / chosen["episodes"],
            "calibration_met": chosen["met"], "calibration_flops_vs_target": chosen["flops_vs_target"],
            **{f"calibration_{k}": chosen[k] for k in ("sent_up", "none_sent_up", "allocated_share") if k in chosen},
            "online_kappa": kappa_from_probability(run.kappa), "calibration_episodes": len(held_out)}
