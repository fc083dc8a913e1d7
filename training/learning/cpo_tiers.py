"""CPO of the K-tier policy π(tier | o, k) and its threshold κ, from traces with every tier's step.

The same problem as ``cpo.py`` (minimise the expected FLOPs subject to coverage
P(R_Π = 1 ∨ R_M = 0) ≥ 1 − α) over the paper's larger action space: on a step written by tier k,
accept it or have any tier k' > k rewrite it (the policy is then asked again on that tier's step).
The traces hold, for every prefix, what each tier writes and the verifier's verdict on it
(``collect(..., record_tiers=True)``), so any action sequence is replayed exactly on the
recorded prefixes. Read top to bottom:

1. per-step tensors: the policy's input for every (step, tier), the verdicts and the FLOPs;
2. each update, a batch of episodes is replayed under the behaviour μ = (1 − ε)·π_old + ε·uniform
   over the allowed tiers, giving decisions with their μ(a | o) (one per tier visited);
3. the cost and coverage critics regress on V-trace targets (``cpo.episode_targets``, truncated
   ρ̄, c̄) and ``cpo.trust_region_step`` takes the CPO step (natural gradient, coverage
   constraint by its Lagrange multiplier, recovery when infeasible, KL ≤ δ);
4. κ follows the online-conformal rule (``cpo.update_kappa``) on the deterministic gate's
   surrogate misses, and is finally calibrated on held-out episodes with the split-conformal bound.
   Both run on the probability scale; the artifact gets the same threshold as a log-odds
   (``policy.kappa_from_probability``), the scale of every policy artifact.

The deterministic gate: escalate iff 1 − π(k | o, k) ≥ κ, to argmax_{j > k} π(j | o, k).
The surrogate miss (``walk_miss``): unless R_M = 0, a miss when any step the walk keeps fails
the verifier, along the whole recorded episode.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from stepgraph.training.calibration.guarantee import allowed_misses, calibration_guarantee
from stepgraph.training.data.records import Episode
from stepgraph.training.learning.cpo import (
    Batchable,
    CPOArgs,
    Run,
    column_statistics,
    decisions_batch,
    new_run,
    replay_update,
    supervised_stage,
    train_loop,
    with_steps,
)

from stepgraph.artifacts.policy import (
    PolicyArtifact,
    PolicyNetwork,
    kappa_from_probability,
    tier_inputs,
)
from stepgraph.errors import ConfigError, StepgraphError
from stepgraph.features import FEATURE_SCHEMA, FeatureSchema


@dataclass
class TierCPOArgs(CPOArgs):
    alpha: float = 0.03
    """allowed miss rate: coverage must be at least 1 - alpha"""
    steps: int = 800
    batch_size: int = 16
    epsilon: float = 0.02
    """behaviour exploration: with this probability a uniformly random allowed tier, else π_old's (larger values
    keep the coverage critic's miss estimate above α, so the trust region stays in recovery and escalates more)"""
    warm_start: int = 0
    """full-batch cross-entropy steps fitting π(· | o, k) to "the cheapest tier ≥ k whose step the verifier accepts"
    before CPO (0: start from random weights)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.epsilon, int | float) and 0 <= self.epsilon < 1):
            raise ConfigError(f"TierCPOArgs.epsilon (--epsilon) must be a number in [0, 1), got {self.epsilon!r}.")


class MissingTierTableError(StepgraphError, ValueError):
    """Traces without every tier's step (collected without ``record_tiers``)."""


# --- 1. data -------------------------------------------------------------------------------------


@dataclass
class TierData:
    """Every recorded step's table as tensors; ``starts``/``ends`` index each episode's steps."""

    x: torch.Tensor  # (S, K, F + K): the policy's input on tier k's step
    ok: torch.Tensor  # (S, K) the verifier accepted tier k's step (None counts as not)
    flops: torch.Tensor  # (S, K) FLOPs of tier k's step
    starts: list[int]
    ends: list[int]
    target_reward: list[int]

    @property
    def n_tiers(self) -> int:
        return self.ok.shape[1]


def cheapest_accepted(ok: torch.Tensor) -> torch.Tensor:
    """(S, K) verdicts → (S, K) labels: for tier k, the cheapest tier j ≥ k whose step is verified, else the strongest."""
    k = ok.shape[1]
    labels = torch.full(ok.shape, k - 1, dtype=torch.long)
    for j in reversed(range(k)):  # from the strongest down, so the cheapest verified tier ≥ k wins
        verified = ok[:, j] == 1
        labels[:, : j + 1] = torch.where(verified[:, None], torch.full_like(labels[:, : j + 1], j), labels[:, : j + 1])
    return labels


def _tables(episode: Episode, columns: Sequence[int]) -> list[list[dict[str, Any]]]:
    tables = []
    for step in episode.steps:
        if not step.tiers or max(columns) >= len(step.tiers):
            raise MissingTierTableError(
                f"Episode {episode.problem_id!r} step {step.index} has no table of tiers {list(columns)}: collect the traces "
                "with every tier's step (`collect(..., record_tiers=True)`, e.g. `stepgraph bench --tiers 3`).")
        tables.append([step.tiers[c] for c in columns])
    return tables


def tier_normalisation(episodes: Sequence[Episode], schema: FeatureSchema, columns: Sequence[int],
                       ignore: Sequence[str] = ()) -> tuple[list[float], list[float], list[str]]:
    """``cpo.normalisation`` over the observations of every tier that decides (all but the strongest)."""
    rows = [schema.vector(entry["observation"]) for e in episodes for table in _tables(e, columns) for entry in table[:-1]]
    return column_statistics(rows, schema.names, ignore)


def to_tier_tensors(episodes: Sequence[Episode], artifact: PolicyArtifact, columns: Sequence[int]) -> TierData:
    """The tables of ``columns`` (indices into the recorded tiers, cheapest first) as tensors."""
    k = len(columns)
    rows: list[list[float]] = []
    ok: list[list[float]] = []
    flops: list[list[float]] = []
    starts: list[int] = []
    ends: list[int] = []
    for episode in episodes:
        starts.append(len(ok))
        for table in _tables(episode, columns):
            rows.extend(artifact.schema.vector(entry["observation"]) for entry in table)
            ok.append([float(entry["correct"] is True) for entry in table])
            flops.append([float(entry["flops"]) for entry in table])
        ends.append(len(ok))
    features = artifact.normalise(rows).view(len(ok), k, -1)
    tiers = torch.arange(k).expand(len(ok), k)
    return TierData(tier_inputs(features, tiers, k), torch.tensor(ok), torch.tensor(flops),
                    starts, ends, [e.target_reward for e in episodes])


# --- 2. replay -----------------------------------------------------------------------------------


@dataclass
class Walk:
    """One replayed episode: its decisions, which tier's step was kept at each step, and its cost."""

    decisions: list[tuple[int, int, int, float]]  # (step row, tier k, chosen tier j, μ(j | o, k))
    kept: list[int]
    flops: float


def walk(data: TierData, episode: int, choose: Callable[[int, int], tuple[int, float]],
         start: Callable[[int], int] | None = None) -> Walk:
    """Replay one episode: on each step start at tier 0 (or ``start(row)``, the tier an ex-ante allocator
    picked, whose step is then the first paid for); ``choose(row, k)`` gives (tier j ≥ k, its probability).

    The strongest tier's step is always kept (nothing is above it).
    """
    top = data.n_tiers - 1
    decisions, kept, cost = [], [], 0.0
    for row in range(data.starts[episode], data.ends[episode]):
        k = 0 if start is None else start(row)
        while k < top:
            j, prob = choose(row, k)
            decisions.append((row, k, j, prob))
            cost += float(data.flops[row, k])
            if j == k:
                break
            k = j
        if k == top:
            cost += float(data.flops[row, top])
        kept.append(k)
    return Walk(decisions, kept, cost)


def walk_miss(data: TierData, episode: int, kept: Sequence[int]) -> bool:
    """The surrogate of a miss: R_M = 1 and some kept step along the whole episode fails the verifier.

    Unlike ``cpo.episode_miss``, the walk does not stop where it keeps a verified step that the
    behaviour got wrong. The recorded rows after that point continue the behaviour's wrong prefix,
    but the tier table still says which tiers write a right next step there: under local
    verification (the testbed's, a judge's) that is the step the gate faces after its own right
    prefix, and under a prefix-dependent verifier (rollouts) it can only count more misses. Ending
    the walk there instead counted the unrecorded rest as covered, which CPO learnt to exploit.
    A row where no tier writes a right step (the behaviour's wrong prefix left nothing right to
    write, as task v2's verifier judges a step that builds on a wrong earlier result) counts no
    miss: no routing there could do better, and a gate that kept a wrong step before it was
    already counted at that step.
    """
    if data.target_reward[episode] == 0:
        return False
    rows = range(data.starts[episode], data.ends[episode])
    return any(data.ok[row, k] != 1 and bool((data.ok[row] == 1).any()) for row, k in zip(rows, kept, strict=True))


def gate_chooser(probs: torch.Tensor, kappa: float) -> Callable[[int, int], tuple[int, float]]:
    """The deterministic gate on precomputed π (rows × K × K): escalate iff 1 − π(k) ≥ κ, to the likeliest tier above."""

    def choose(row: int, k: int) -> tuple[int, float]:
        p = probs[row, k]
        if 1.0 - float(p[k]) < kappa:
            return k, 1.0
        return k + 1 + int(p[k + 1 :].argmax()), 1.0

    return choose


def behaviour_chooser(probs: torch.Tensor, epsilon: float, rng: random.Random) -> Callable[[int, int], tuple[int, float]]:
    """Sample from μ = (1 − ε)·π + ε·uniform over the tiers ≥ k; returns the tier and its μ."""
    n = probs.shape[-1]

    def choose(row: int, k: int) -> tuple[int, float]:
        mu = (1 - epsilon) * probs[row, k].double()
        mu[k:] += epsilon / (n - k)
        j = rng.choices(range(n), weights=mu.tolist())[0]
        return j, float(mu[j])

    return choose


@torch.no_grad()
def all_probabilities(policy: PolicyNetwork, data: TierData) -> torch.Tensor:
    """π(· | o, k) on every step's every tier: (rows, K, K)."""
    return policy.probabilities(data.x)


def replay_batch(data: TierData, episodes: Sequence[int], walks: Sequence[Walk], cost_scale: float) -> Batchable:
    """The walks' decisions as the per-step tensors ``cpo.episode_targets`` reads.

    A decision's reward is −(FLOPs of the step it judged, plus the strongest tier's step when it
    escalates to it) / ``cost_scale``; the coverage indicator is on each episode's last decision.
    """
    top = data.n_tiers - 1
    decisions = [d for w in walks for d in w.decisions]
    index = torch.tensor([(row, k) for row, k, _, _ in decisions])
    rewards = [-(float(data.flops[row, k]) + (float(data.flops[row, top]) if j == top else 0.0)) / cost_scale
               for row, k, j, _ in decisions]
    return decisions_batch(data.x[index[:, 0], index[:, 1]], torch.tensor([j for _, _, j, _ in decisions]),
                           torch.tensor([mu for *_, mu in decisions]), rewards, [len(w.decisions) for w in walks],
                           [not walk_miss(data, e, w.kept) for e, w in zip(episodes, walks)],
                           [data.target_reward[e] for e in episodes])


# --- 3. the loop ---------------------------------------------------------------------------------


def start_tier_run(episodes: Sequence[Episode], args: TierCPOArgs, tiers: Sequence[dict[str, Any]], columns: Sequence[int],
                   schema: FeatureSchema, ignore_features: Sequence[str]) -> Run:
    episodes = with_steps(episodes, "train_tier_policy")
    if len(columns) < 2 or list(columns) != sorted(set(columns)):
        raise ConfigError(f"columns must name at least two recorded tiers in increasing order, got {list(columns)}.")
    torch.manual_seed(args.seed)
    mean, std, ignored = tier_normalisation(episodes, schema, columns, ignore_features)
    policy = PolicyNetwork(len(schema.names), args.hidden, args.layers, len(columns), tier_input=True)
    artifact = PolicyArtifact(policy, kappa_from_probability(args.kappa_init), args.alpha, schema, mean, std, args.hidden,
                              args.layers, [dict(tiers[c]) for c in columns], ignored=ignored)
    data = to_tier_tensors(episodes, artifact, columns)
    if args.warm_start:
        warm_start(policy, data, args.warm_start)
    cost_scale = float(data.flops[:, -1].sum()) / len(episodes) or 1.0  # the strongest tier alone on the recorded prefixes
    return new_run(args, data, artifact, policy, cost_scale)


def warm_start(policy: PolicyNetwork, data: TierData, steps: int, lr: float = 1e-2) -> list[float]:
    """Supervised start (R2-Reasoner's first stage, ``cpo.supervised_stage``): cross-entropy of π(· | o, k)
    on "the cheapest tier ≥ k whose step the verifier accepts", on every deciding tier's step.

    Random weights leave CPO to find "accept a confident draft" by exploration, and it settles on
    the safe middle (every draft to the mid tier); the per-step oracle's labels start it near the
    cheap routing instead. Returns the loss per step.
    """
    deciding = data.x[:, :-1].reshape(-1, data.x.shape[-1])
    labels = cheapest_accepted(data.ok)[:, :-1].reshape(-1)
    return supervised_stage(policy, deciding, labels, steps, lr)


def update(run: Run) -> dict[str, float]:
    """One update: replay a batch under μ, fit the critics on V-trace targets, CPO step, κ step."""
    data = run.data
    episodes = run.rng.sample(range(len(data.starts)), min(run.args.batch_size, len(data.starts)))
    probs = all_probabilities(run.policy, data)
    epsilon = cast(TierCPOArgs, run.args).epsilon
    walks = [walk(data, e, behaviour_chooser(probs, epsilon, run.rng)) for e in episodes]
    replayed = replay_batch(data, episodes, walks, run.cost_scale)
    with torch.no_grad():
        pi_a = run.policy.probabilities(replayed.x).gather(1, replayed.action[:, None]).squeeze(1)

    def misses() -> list[bool]:
        gate = gate_chooser(all_probabilities(run.policy, data), run.kappa)
        return [walk_miss(data, e, walk(data, e, gate).kept) for e in episodes]

    return replay_update(run, replayed, pi_a, misses)


# --- 4. κ and the summary ------------------------------------------------------------------------


def replay_gate(data: TierData, probs: torch.Tensor, kappa: float) -> dict[str, Any]:
    """The deterministic gate over every episode: misses, mean FLOPs and the share of steps each tier kept."""
    chooser = gate_chooser(probs, kappa)
    walks = [walk(data, e, chooser) for e in range(len(data.starts))]
    kept = [k for w in walks for k in w.kept]
    return {
        "misses": sum(walk_miss(data, e, w.kept) for e, w in enumerate(walks)),
        "episodes": len(walks),
        "mean_flops": sum(w.flops for w in walks) / len(walks),
        "tier_share": [kept.count(k) / max(1, len(kept)) for k in range(data.n_tiers)],
    }


def calibrate_tier_kappa(data: TierData, policy: PolicyNetwork, alpha: float, max_candidates: int = 400) -> tuple[float, int]:
    """The largest κ whose surrogate misses on held-out episodes are at most ⌊α(n + 1)⌋ − 1 (split
    conformal, as ``cpo.calibrate_kappa``); (0.0, misses at κ = 0) when none is. Returns (κ, misses)."""
    probs = all_probabilities(policy, data)
    allowed = allowed_misses(alpha, len(data.starts))
    current = torch.arange(data.n_tiers)
    scores = (1.0 - probs[:, current, current])[:, :-1].reshape(-1)
    candidates = torch.unique(scores)
    if candidates.numel() > max_candidates:
        candidates = torch.quantile(scores, torch.linspace(0, 1, max_candidates))
    for kappa in sorted({float(c) for c in candidates} | {1.0}, reverse=True):
        misses = replay_gate(data, probs, kappa)["misses"]
        if misses <= allowed:
            return kappa, misses
    return 0.0, replay_gate(data, probs, 0.0)["misses"]


def log_odds_kappa(data: TierData, policy: PolicyNetwork, kappa: float) -> float:
    """The log-odds κ that escalates every step of ``data`` the probability κ escalates: ``kappa_from_probability(κ)``,
    or just below the least log-odds of such a step where float32 probabilities tied steps that log-odds tell apart."""
    current = torch.arange(data.n_tiers)
    deciding = data.x[:, :-1].reshape(-1, data.x.shape[-1])
    with torch.no_grad():
        escalated = policy.escalate_log_odds(deciding)[(1.0 - all_probabilities(policy, data)[:, current, current])[:, :-1].reshape(-1) >= kappa]
    converted = kappa_from_probability(kappa)
    if not escalated.numel():
        return converted
    low = float(escalated.min())
    return min(converted, low - 1e-6 * max(1.0, abs(low)))


def train_tier_policy(episodes: Sequence[Episode], tiers: Sequence[dict[str, Any]], args: TierCPOArgs | None = None, *,
                      columns: Sequence[int] | None = None, calibration: Sequence[Episode] = (),
                      schema: FeatureSchema = FEATURE_SCHEMA, ignore_features: Sequence[str] = (), progress: bool = True,
                      log: Callable[[int, dict], None] | None = None) -> tuple[PolicyArtifact, list[dict[str, float]]]:
    """Train the K-tier π and κ on traces with tier tables; return the artifact and per-update metrics.

    Args:
        episodes: train episodes collected with ``record_tiers=True``.
        tiers: ``{"name", "parameters"}`` of every recorded tier (the store's ``models`` meta).
        columns: the recorded tiers to route between (default: all), e.g. ``[0, 2]`` for the
            2-tier draft → target policy on 3-tier traces.
        calibration: held-out episodes; κ is calibrated on them (split conformal) when given.
    """
    columns = list(range(len(tiers))) if columns is None else list(columns)
    run = start_tier_run(episodes, args or TierCPOArgs(), tiers, columns, schema, ignore_features)
    history = train_loop(run, update, f"cpo {len(columns)} tiers", progress, log)
    artifact = run.artifact
    kappa = run.kappa  # the probability scale of the online rule and of calibrate_tier_kappa, up to the artifact
    summary: dict[str, Any] = {}
    held_out = [e for e in calibration if e.steps]
    if held_out:
        held = to_tier_tensors(held_out, artifact, columns)
        kappa, misses = calibrate_tier_kappa(held, run.policy, run.args.alpha)
        artifact.guarantee = calibration_guarantee(run.args.alpha, len(held_out), misses)
        if artifact.guarantee["type"] == "none":
            kappa = run.kappa  # no κ meets the bound: keep the online one, claiming nothing
        summary = {"online_kappa": kappa_from_probability(run.kappa), "calibrated_kappa": kappa_from_probability(kappa),
                   "calibration_episodes": len(held_out), "calibration": replay_gate(held, all_probabilities(run.policy, held), kappa)}
    else:
        artifact.guarantee = calibration_guarantee(run.args.alpha, 0)
    train = replay_gate(run.data, all_probabilities(run.policy, run.data), kappa)
    artifact.kappa = log_odds_kappa(held if held_out else run.data, run.policy, kappa)
    artifact.training = {
        **summary,
        "algorithm": "cpo-k-tier+online-conformal-kappa",
        "args": asdict(run.args),
        "columns": columns,
        "episodes": len(run.data.starts),
        "cost_scale_flops": run.cost_scale,
        "train": train,
        "surrogate_coverage": 1 - train["misses"] / train["episodes"],
    }
    run.policy.eval()
    if not math.isfinite(artifact.kappa):
        raise StepgraphError("κ is not finite after training; check the traces.")
    return artifact, history
