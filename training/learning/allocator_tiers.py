"""The ex-ante allocator on K-tier traces: labels, replay, RL stage and κ over every recorded tier.

Traces collected with ``record_tiers=True`` hold, for each recorded prefix, what every tier writes
and the verifier's verdict on it (``StepRecord.tiers``), so an allocation is replayed exactly:

1. the label of a step is the cheapest tier whose recorded step is verified
   (``cpo_tiers.cheapest_accepted`` from tier 0);
2. the replay: the allocator picks tier j before any draft, and the step costs tier j's FLOPs only
   (a step sent to the top tier pays no draft). With a post-hoc K-tier policy the walk continues
   from tier j as ``cpo_tiers.walk`` does: the policy may still send tier j's step higher. A miss
   is ``cpo_tiers.walk_miss`` of the kept steps;
3. the RL stage is CPO (``cpo.fit_critics`` / ``cpo.policy_step``: V-trace critics, trust region,
   coverage constraint) on replays under μ = (1 − ε)·π + ε·uniform, then the online-conformal κ
   update on the deterministic allocator's misses;
4. κ is calibrated on held-out tier episodes (split conformal: the largest κ whose misses are at
   most ⌊α(n + 1)⌋ − 1), for the supervised and the RL weights; the cheaper at the bound is kept.

The allocator's observation before a step is that of the recorded prefix
(``allocator.episode_observations``), as in the 2-tier training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, cast

import torch
from stepgraph.training.calibration.guarantee import allowed_misses
from stepgraph.training.data.records import Episode
from stepgraph.training.learning.allocator_stages import (
    calibration_stage,
    episode_observations,
    new_allocator,
    supervised,
)
from stepgraph.training.learning.cpo import (
    CPOArgs,
    Run,
    decisions_batch,
    new_run,
    replay_update,
    train_loop,
)
from stepgraph.training.learning.cpo_tiers import (
    TierData,
    Walk,
    cheapest_accepted,
    gate_chooser,
    to_tier_tensors,
    walk,
    walk_miss,
)

from stepgraph.artifacts.policy import PolicyArtifact
from stepgraph.errors import ConfigError
from stepgraph.features import FeatureSchema
from stepgraph.routing.allocator import ALLOCATOR_SCHEMA, tier_from_probabilities
from stepgraph.routing.learned_allocator import AllocatorArtifact, AllocatorNetwork

EPSILON = 0.05
"""behaviour exploration of the RL stage's replays: with this probability a uniformly random tier"""


def has_tier_tables(episodes: Sequence[Episode]) -> bool:
    """Whether every step records every tier's step (``collect(..., record_tiers=True)``)."""
    steps = [s for e in episodes for s in e.steps]
    return bool(steps) and all(s.tiers for s in steps)


def check_columns(columns: Sequence[int] | None, recorded: int, option: str = "columns") -> list[int]:
    """The recorded tiers to route over (default: all); at least two, increasing, each in [0, recorded)."""
    chosen = list(range(recorded)) if columns is None else list(columns)
    if len(chosen) < 2 or chosen != sorted(set(chosen)) or chosen[0] < 0 or chosen[-1] >= recorded:
        raise ConfigError(f"{option} must name at least two of the {recorded} recorded tiers (0 to {recorded - 1}) in "
                          f"increasing order, got {chosen}.")
    return chosen


# --- 1. data -------------------------------------------------------------------------------------


class _VerdictsOnly:
    """Stands for a policy artifact in ``to_tier_tensors`` where only the verdicts and FLOPs are read."""

    schema = FeatureSchema("stepgraph.none", 1, ["none"])

    @staticmethod
    def normalise(rows: Sequence[Sequence[float]]) -> torch.Tensor:
        return torch.zeros(len(rows), 1)


@dataclass
class AllocatorTierData:
    """The allocator's inputs and the tier tables it is replayed on."""

    x: torch.Tensor  # (S, F) the allocator's normalised observation before each step
    tables: TierData  # verdicts and FLOPs of every tier's step (and the post-hoc policy's inputs)
    gate_probs: torch.Tensor | None  # the post-hoc policy's π(· | o, k) on every step and tier: (S, K, K)
    gate_kappa: float

    @property
    def labels(self) -> torch.Tensor:
        """The cheapest tier whose step the verifier accepts (the strongest when none is)."""
        return cheapest_accepted(self.tables.ok)[:, 0]


def tier_data(episodes: Sequence[Episode], artifact: AllocatorArtifact, columns: Sequence[int],
              policy: PolicyArtifact | None = None) -> AllocatorTierData:
    """The episodes as tensors; with ``policy`` (over the same tiers) its π on every tier's step, for the walk after allocation."""
    rows = [ALLOCATOR_SCHEMA.vector(o) for e in episodes for o in episode_observations(e)]
    tables = to_tier_tensors(episodes, cast(Any, policy or _VerdictsOnly()), columns)
    probs = None
    if policy is not None:
        with torch.no_grad():
            probs = policy.network.probabilities(tables.x)
    # the walk compares 1 − π(k | o, k) with κ as a probability, the scale of this module's replays
    kappa = float(torch.sigmoid(torch.tensor(policy.kappa, dtype=torch.float64))) if policy else 1.0
    return AllocatorTierData(artifact.normalise(rows), tables, probs, kappa)


# --- 2. replay -----------------------------------------------------------------------------------


def _keep(row: int, k: int) -> tuple[int, float]:
    return k, 1.0


def replay(data: AllocatorTierData, episode: int, allocated: Sequence[int] | Mapping[int, int]) -> Walk:
    """One episode with step ``row`` allocated to tier ``allocated[row]``; then the post-hoc policy, if any."""
    choose = gate_chooser(data.gate_probs, data.gate_kappa) if data.gate_probs is not None else _keep
    return walk(data.tables, episode, choose, start=lambda row: allocated[row])


def step_costs(tables: TierData, replayed: Walk, rows: range) -> list[float]:
    """FLOPs of each step of a replayed episode: every tier visited (the allocated one, and those the policy sent it to)."""
    visited: dict[int, set[int]] = {row: {k} for row, k in zip(rows, replayed.kept)}
    for row, k, _, _ in replayed.decisions:
        visited[row].add(k)
    return [sum(float(tables.flops[row, k]) for k in visited[row]) for row in rows]


def allocations(probs: torch.Tensor, kappa: float) -> list[int]:
    """The deterministic allocator's tier for every step (``allocator.tier_from_probabilities``, as at run time)."""
    return [tier_from_probabilities(p, kappa)[0] for p in probs.tolist()]


def replay_allocator(data: AllocatorTierData, probs: torch.Tensor, kappa: float) -> dict[str, Any]:
    """The allocator at κ over every episode: misses, FLOPs relative to the strongest tier alone, tier shares."""
    allocated = allocations(probs, kappa)
    walks = [replay(data, e, allocated) for e in range(len(data.tables.starts))]
    kept = [k for w in walks for k in w.kept]
    n_tiers = data.tables.n_tiers
    return {
        "kappa": kappa,
        "misses": sum(walk_miss(data.tables, e, w.kept) for e, w in enumerate(walks)),
        "flops_vs_target": sum(w.flops for w in walks) / (float(data.tables.flops[:, -1].sum()) or 1.0),
        "sent_up": sum(t > 0 for t in allocated) / max(1, len(allocated)),
        "allocated_share": [allocated.count(k) / max(1, len(allocated)) for k in range(n_tiers)],
        "kept_share": [kept.count(k) / max(1, len(kept)) for k in range(n_tiers)],
    }


# --- 3. RL stage ---------------------------------------------------------------------------------


def _update(run: Run) -> dict[str, float]:
    """One update: replay a batch under μ = (1 − ε)·π + ε·uniform, fit the critics, trust-region step, κ update."""
    data: AllocatorTierData = run.data
    tables, k = data.tables, data.tables.n_tiers
    episodes = run.rng.sample(range(len(tables.starts)), min(run.args.batch_size, len(tables.starts)))
    with torch.no_grad():
        mu = (1 - EPSILON) * torch.softmax(run.policy(data.x), dim=-1) + EPSILON / k
    rows: list[int] = []
    actions: list[int] = []
    rewards: list[float] = []
    covered: list[bool] = []
    for e in episodes:
        steps = range(tables.starts[e], tables.ends[e])
        allocated = {row: run.rng.choices(range(k), weights=mu[row].tolist())[0] for row in steps}
        replayed = replay(data, e, allocated)
        rows.extend(steps)
        actions.extend(allocated[row] for row in steps)
        rewards.extend(-c / run.cost_scale for c in step_costs(tables, replayed, steps))
        covered.append(not walk_miss(tables, e, replayed.kept))
    index, action = torch.tensor(rows), torch.tensor(actions)
    batchable = decisions_batch(data.x[index], action, mu[index].gather(1, action[:, None]).squeeze(1), rewards,
                                [tables.ends[e] - tables.starts[e] for e in episodes], covered,
                                [tables.target_reward[e] for e in episodes])
    with torch.no_grad():
        pi_a = torch.softmax(run.policy(batchable.x), dim=-1).gather(1, action[:, None]).squeeze(1)

    def misses() -> list[bool]:
        with torch.no_grad():
            allocated_now = allocations(torch.softmax(run.policy(data.x), dim=-1), run.kappa)
        return [walk_miss(tables, e, replay(data, e, allocated_now).kept) for e in episodes]

    return replay_update(run, batchable, pi_a, misses)


# --- 4. calibration ------------------------------------------------------------------------------


def calibrate_tier_allocator(data: AllocatorTierData, network: AllocatorNetwork, alpha: float,
                             max_candidates: int = 100) -> dict[str, Any]:
    """The largest κ whose misses on the held-out episodes are ≤ ⌊α(n + 1)⌋ − 1 (split conformal).

    The candidates are the tail probabilities P(cheapest > k) where the allocation changes. Returns
    ``replay_allocator``'s summary at κ, whether the bound was met (else κ = 0: every step to the
    strongest tier) and the misses and cost of allocating every step to tier 0 (``none_sent_up``).
    """
    with torch.no_grad():
        probs = torch.softmax(network(data.x), dim=-1)
    n = len(data.tables.starts)
    allowed = allowed_misses(alpha, n)
    tails = (probs.flip(-1).cumsum(-1).flip(-1)[:, 1:]).reshape(-1)  # P(cheapest > k) for k < top
    candidates = torch.unique(tails)
    if candidates.numel() > max_candidates:
        candidates = torch.quantile(tails, torch.linspace(0, 1, max_candidates))
    never = replay_allocator(data, probs, 1.0 + 1e-9)
    for kappa in sorted({float(c) for c in candidates} | {1.0 + 1e-9}, reverse=True):
        trial = replay_allocator(data, probs, kappa)
        if trial["misses"] <= allowed:
            return {**trial, "kappa": min(kappa, 1.0), "met": True, "episodes": n,
                    "none_sent_up": {k: never[k] for k in ("misses", "flops_vs_target")}}
    return {**replay_allocator(data, probs, 0.0), "met": False, "episodes": n,
            "none_sent_up": {k: never[k] for k in ("misses", "flops_vs_target")}}


# --- 5. the two stages and the calibration -------------------------------------------------------


def train_tier_allocator(episodes: Sequence[Episode], args: CPOArgs, *, tiers: Sequence[dict[str, Any]],
                         columns: Sequence[int] | None = None, calibration: Sequence[Episode] = (),
                         policy: PolicyArtifact | None = None, supervised_epochs: int = 100, supervised_lr: float = 1e-2,
                         progress: bool = False, log: Callable[[int, dict], object] | None = None) -> AllocatorArtifact:
    """Supervised, then CPO on replayed allocations, then calibrated κ, over the recorded tiers ``columns``.

    ``policy`` is the post-hoc K-tier policy (over the same tiers) the allocator will be combined with:
    its walk after the allocated tier enters the RL stage's replays and the calibration.
    """
    columns = check_columns(columns, len(tiers))
    chosen_tiers = [dict(tiers[c]) for c in columns]
    if policy is not None and [t.get("parameters") for t in policy.tiers] != [t.get("parameters") for t in chosen_tiers]:
        raise ConfigError(f"The post-hoc policy routes over the tiers {policy.tiers}, the allocator over {chosen_tiers}; "
                          "combine it with a K-tier policy trained on the same tiers (columns).")
    artifact = new_allocator(episodes, args, chosen_tiers)
    network = artifact.network
    data = tier_data(episodes, artifact, columns, policy)
    labels = data.labels
    supervised_weights, supervised_summary = supervised(network, data.x, labels, supervised_epochs, supervised_lr)
    cost_scale = float(data.tables.flops[:, -1].sum()) / len(episodes) or 1.0  # the strongest tier alone
    run = new_run(args, data, artifact, network, cost_scale)
    history = train_loop(run, _update, "allocator rl (tiers)", progress, log)
    summary = calibration_stage(run, supervised_weights, calibration, lambda held_out: partial(
        calibrate_tier_allocator, tier_data(held_out, artifact, columns, policy), network, args.alpha))
    kappa = torch.sigmoid(torch.tensor(artifact.kappa, dtype=torch.float64)).item()  # the replays' probability scale
    with torch.no_grad():
        train = replay_allocator(data, torch.softmax(network(data.x), dim=-1), kappa)
    artifact.training = {
        **summary,
        "algorithm": "supervised+cpo-k-tier-replay+split-conformal-kappa",
        "args": asdict(args),
        "columns": columns,
        "exploration": EPSILON,
        **supervised_summary,
        "rl_accepted_steps": sum(h["charts/accepted"] for h in history),
        "combined_with_policy": policy is not None,
        "episodes": len(episodes),
        "cost_scale_flops": cost_scale,
        "train_sent_up": train["sent_up"],
        "train": train,
    }
    return artifact
