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

import copy
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from stepgraph.training.calibration.guarantee import allowed_misses, calibration_guarantee
from stepgraph.training.data.records import Episode
from stepgraph.training.learning.allocator_stages import (
    episode_observations,
    keep_cheaper_stage,
    normalisation,
    supervised_stage,
)
from stepgraph.training.learning.cpo import (
    Batch,
    Batchable,
    CPOArgs,
    Run,
    _critic,
    fit_critics,
    policy_step,
    update_kappa,
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
from tqdm import tqdm

from stepgraph.artifacts.policy import PolicyArtifact, kappa_from_probability
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


def _replayed_batch(run: Run, data: AllocatorTierData, episodes: Sequence[int]) -> Batch:
    """Replay ``episodes`` under μ = (1 − ε)·π + ε·uniform; make the replay the run's data and return its batch."""
    tables, k = data.tables, data.tables.n_tiers
    with torch.no_grad():
        mu = (1 - EPSILON) * torch.softmax(run.policy(data.x), dim=-1) + EPSILON / k
    rows: list[int] = []
    actions: list[int] = []
    rewards: list[float] = []
    coverage: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    for e in episodes:
        steps = range(tables.starts[e], tables.ends[e])
        allocated = {row: run.rng.choices(range(k), weights=mu[row].tolist())[0] for row in steps}
        replayed = replay(data, e, allocated)
        starts.append(len(rows))
        rows.extend(steps)
        actions.extend(allocated[row] for row in steps)
        rewards.extend(-c / run.cost_scale for c in step_costs(tables, replayed, steps))
        coverage.extend([0.0] * (len(steps) - 1) + [float(not walk_miss(tables, e, replayed.kept))])
        ends.append(len(rows))
    index, action = torch.tensor(rows), torch.tensor(actions)
    mu_a = mu[index].gather(1, action[:, None]).squeeze(1)
    empty = torch.zeros(len(rows))
    run.data = Batchable(x=data.x[index], action=action, mu_escalate=mu_a, reward=torch.tensor(rewards),
                         coverage=torch.tensor(coverage), draft_ok=empty, escalated_ok=empty, starts=starts, ends=ends,
                         episode_reward=[0] * len(episodes), target_reward=[tables.target_reward[e] for e in episodes])
    with torch.no_grad():
        ratio = torch.softmax(run.policy(run.data.x), dim=-1).gather(1, action[:, None]).squeeze(1) / mu_a.clamp_min(1e-3)
    return Batch(list(range(len(episodes))), run.data.x, action, ratio.clamp(max=run.args.rho_bar), ratio.clamp(max=run.args.c_bar))


def rl_stage(run: Run, data: AllocatorTierData, progress: bool = False,
             log: Callable[[int, dict], object] | None = None) -> list[dict[str, float]]:
    """CPO's loop on replayed allocations: sample, fit critics, trust-region step, κ update."""
    history = []
    n = len(data.tables.starts)
    for step in tqdm(range(run.args.steps), desc="allocator rl (tiers)", disable=not progress):
        episodes = run.rng.sample(range(n), min(run.args.batch_size, n))
        batch = _replayed_batch(run, data, episodes)
        targets, losses = fit_critics(run, batch)
        metrics = losses | policy_step(run, batch, targets)
        with torch.no_grad():
            allocated = allocations(torch.softmax(run.policy(data.x), dim=-1), run.kappa)
        misses = [walk_miss(data.tables, e, replay(data, e, allocated).kept) for e in episodes]
        for miss in misses:
            run.kappa = update_kappa(run.kappa, miss, run.args.alpha, run.args.eta)
        metrics |= {"charts/kappa": run.kappa, "charts/batch_misses": float(sum(misses))}
        history.append(metrics)
        if log is not None:
            log(step, metrics)
    return history


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
    torch.manual_seed(args.seed)
    rows = [ALLOCATOR_SCHEMA.vector(o) for e in episodes for o in episode_observations(e)]
    mean, std, ignored = normalisation(rows)
    network = AllocatorNetwork(len(ALLOCATOR_SCHEMA.names), len(columns), args.hidden, args.layers)
    artifact = AllocatorArtifact(network, kappa_from_probability(args.kappa_init), args.alpha, chosen_tiers, mean, std,
                                 args.hidden, args.layers, ignored=ignored)
    data = tier_data(episodes, artifact, columns, policy)
    labels = data.labels
    losses = supervised_stage(network, data.x, labels, supervised_epochs, supervised_lr)
    with torch.no_grad():
        supervised_accuracy = float((network(data.x).argmax(-1) == labels).float().mean())
    supervised_weights = copy.deepcopy(network.state_dict())
    cost_scale = float(data.tables.flops[:, -1].sum()) / len(episodes) or 1.0  # the strongest tier alone
    critics = _critic(data.x.shape[1], args.hidden), _critic(data.x.shape[1], args.hidden)
    optimiser = torch.optim.Adam([*critics[0].parameters(), *critics[1].parameters()], lr=args.critic_lr)
    # The run's data is each update's replay (``_replayed_batch``), which cpo's critic and policy steps read.
    run = Run(args, list(episodes), cast(Any, None), cast(Any, artifact), network, critics[0], critics[1], optimiser,
              random.Random(args.seed), cost_scale, args.kappa_init)
    history = rl_stage(run, data, progress, log)
    network.eval()
    kappa = run.kappa  # the probability scale of the replays, up to the artifact
    held_out = [e for e in calibration if e.steps]
    summary: dict[str, Any] = {}
    if held_out:
        cal = tier_data(held_out, artifact, columns, policy)
        chosen, summary = keep_cheaper_stage(network, supervised_weights, lambda: calibrate_tier_allocator(cal, network, args.alpha))
        kappa = chosen["kappa"]
        summary |= {"online_kappa": kappa_from_probability(run.kappa), "calibration_episodes": len(held_out)}
        artifact.guarantee = calibration_guarantee(args.alpha, len(held_out), chosen["misses"])
    else:
        artifact.guarantee = calibration_guarantee(args.alpha, 0)
    artifact.kappa = kappa_from_probability(kappa)
    with torch.no_grad():
        train = replay_allocator(data, torch.softmax(network(data.x), dim=-1), kappa)
    artifact.training = {
        **summary,
        "algorithm": "supervised+cpo-k-tier-replay+split-conformal-kappa",
        "args": asdict(args),
        "columns": columns,
        "exploration": EPSILON,
        "supervised_epochs": supervised_epochs,
        "supervised_lr": supervised_lr,
        "supervised_final_loss": losses[-1] if losses else None,
        "supervised_accuracy": supervised_accuracy,
        "label_share": [float((labels == k).float().mean()) for k in range(len(columns))],
        "rl_accepted_steps": sum(h["charts/accepted"] for h in history),
        "combined_with_policy": policy is not None,
        "episodes": len(episodes),
        "cost_scale_flops": cost_scale,
        "train_sent_up": train["sent_up"],
        "train": train,
    }
    return artifact
