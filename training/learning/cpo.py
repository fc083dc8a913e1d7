"""Constrained policy optimisation of the routing policy π and its threshold κ, from replayed traces.

The problem (Si, Lee, Bastani, sections 3-4): minimise E[C] subject to
P(R_Π = 1 ∨ R_M = 0) ≥ 1 − α, where C is the FLOPs cost of an answer, R_Π whether the routed
answer is right and R_M whether the strongest tier alone is right. Read top to bottom:

1. flatten the behaviour episodes into per-step tensors (features normalised, actions, μ);
2. each step, on a batch of episodes: critics for the cost return and the coverage indicator
   regress on V-trace targets (truncated importance weights ρ̄, c̄);
3. a CPO trust-region step on π (Achiam et al. 2017): natural gradients by conjugate gradient
   on Fisher-vector products, the dual closed form with a Lagrange multiplier ν for the
   coverage constraint, a recovery step when infeasible, backtracking until mean KL ≤ δ;
4. κ follows the online-conformal rule on the batch with the local-verification surrogate;
5. the loop (``train_policy``): sample, fit critics, trust-region step, κ update; then finalise
   (κ calibrated on held-out episodes when given).

Sign convention for κ. The gate is Γ(o) = 1{π(escalate | o) ≥ κ}. An episode is a *miss* when
it is not covered: not (R_Π = 1 ∨ R_M = 0 ∨ every step Γ keeps is verified). A miss must make
escalation more likely, so κ goes *down*:   κ ← clip(κ − η·(miss − α), 0, 1).
(The paper writes eq. 5 as κ ← κ + η(1 − 1{covered} − α) for the conformal set
{a : π(a|o) ≥ κ} read as the actions *allowed*; the gate convention flips the sign.)
In the long run the miss rate of the κ sequence is α, the online-conformal guarantee.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

import torch
from stepgraph.training.data.records import Episode, StepRecord
from tqdm import tqdm

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork, kappa_from_probability
from stepgraph.errors import ConfigError
from stepgraph.features import FEATURE_SCHEMA, FeatureSchema

EPS = 1e-8

# Each setting's allowed range: (test on a finite number of the field's type, the range in words).
_CPO_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "alpha": (lambda v: 0 < v < 1, "in (0, 1)"),
    "steps": (lambda v: v >= 0, ">= 0"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "critic_lr": (lambda v: v > 0, "> 0"),
    "critic_updates": (lambda v: v >= 1, ">= 1"),
    "eta": (lambda v: v >= 0, ">= 0"),
    "kappa_init": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "delta": (lambda v: v > 0, "> 0"),
    "cg_iters": (lambda v: v >= 1, ">= 1"),
    "cg_damping": (lambda v: v >= 0, ">= 0"),
    "backtrack_iters": (lambda v: v >= 1, ">= 1"),
    "rho_bar": (lambda v: v > 0, "> 0"),
    "c_bar": (lambda v: v > 0, "> 0"),
    "gamma": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "hidden": (lambda v: 1 <= v <= 4096, "in [1, 4096]"),
    "layers": (lambda v: 1 <= v <= 16, "in [1, 16]"),
    "seed": (lambda v: True, "any integer"),
    "entropy_coef": (lambda v: v >= 0, ">= 0"),
    "warm_start": (lambda v: v >= 0, ">= 0"),
}


@dataclass
class CPOArgs:
    alpha: float = 0.02
    """allowed miss rate: coverage P(R_routed = 1 or R_target = 0) must be at least 1 - alpha"""
    steps: int = 1000
    """policy (and kappa) updates"""
    batch_size: int = 5
    """episodes per update"""
    critic_lr: float = 1e-3
    """Adam learning rate of the two critics"""
    critic_updates: int = 4
    """critic gradient steps per update"""
    eta: float = 0.1
    """kappa step size of the online-conformal update"""
    kappa_init: float = 0.5
    """initial threshold kappa"""
    delta: float = 0.01
    """trust-region radius: mean KL(pi_old || pi_new) per update"""
    cg_iters: int = 10
    """conjugate-gradient iterations for the natural gradient"""
    cg_damping: float = 0.1
    """damping added to Fisher-vector products"""
    backtrack_iters: int = 10
    """line-search halvings before an update is skipped"""
    rho_bar: float = 2.0
    """V-trace truncation of the importance weights in the TD errors"""
    c_bar: float = 1.0
    """V-trace truncation of the trace-cutting coefficients"""
    gamma: float = 1.0
    """discount (episodes are short; 1 keeps cost and coverage undiscounted)"""
    hidden: int = 64
    """hidden units of the policy and critic MLPs"""
    layers: int = 3
    """linear layers of the policy MLP"""
    seed: int = 0
    """seed of the networks and of batch sampling"""
    entropy_coef: float = 0.0
    """weight of pi's mean entropy in the objective: above 0 keeps pi off saturation (0: the paper's objective)"""
    warm_start: int = 0
    """full-batch steps fitting pi(escalate | o) to the draft-is-wrong label before CPO (0: start from random weights)"""

    def __post_init__(self) -> None:
        """Refuse a setting outside its range at construction, naming the option and the range."""
        for name, (allowed, within) in _CPO_RANGES.items():
            value, integer = getattr(self, name), type(getattr(CPOArgs, name)) is int
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not allowed(value):
                kind = "an integer" if integer else "a finite number"
                raise ConfigError(f"CPOArgs.{name} (--{name.replace('_', '-')}) must be {kind} {within}, got {value!r}.")


# --- 1. data -------------------------------------------------------------------------------------


@dataclass
class Batchable:
    """All steps of all episodes as tensors; ``starts``/``ends`` index each episode's steps."""

    x: torch.Tensor  # (T, F) normalised features
    action: torch.Tensor  # (T,) 1 = escalate
    mu_escalate: torch.Tensor  # (T,) behaviour μ(escalate | o)
    reward: torch.Tensor  # (T,) −cost / cost_scale
    coverage: torch.Tensor  # (T,) 1{R = 1 ∨ R_M = 0} on the last step, else 0
    draft_ok: torch.Tensor  # (T,) verdicts as 1.0 / 0.0 (None counts as not verified)
    escalated_ok: torch.Tensor
    starts: list[int]
    ends: list[int]
    episode_reward: list[int]
    target_reward: list[int]


def normalisation(episodes: Sequence[Episode], schema: FeatureSchema,
                  ignore: Sequence[str] = ()) -> tuple[list[float], list[float], list[str]]:
    """Per-feature mean and std over the recorded steps, and the features the network will not see:
    those in ``ignore`` and those no step recorded (stored as mean 0, std 1)."""
    return column_statistics([schema.vector(s.observation) for e in episodes for s in e.steps], schema.names, ignore)


def column_statistics(rows: Sequence[Sequence[float]], names: Sequence[str],
                      ignore: Sequence[str] = ()) -> tuple[list[float], list[float], list[str]]:
    """Per-column mean and std of feature rows (NaN = not reported), and the columns to ignore:
    those in ``ignore`` and those never reported (stored as mean 0, std 1)."""
    table = torch.tensor(rows, dtype=torch.float64)
    mean, std, ignored = [], [], []
    for name, column in zip(names, table.T):
        seen = column[~torch.isnan(column)]
        if name in ignore or not seen.numel():
            ignored.append(name)
            mean.append(0.0)
            std.append(1.0)
            continue
        sd = float(seen.std()) if seen.numel() > 1 else 1.0
        mean.append(float(seen.mean()))
        std.append(sd if math.isfinite(sd) and sd > 1e-6 else 1.0)
    return mean, std, ignored


def to_tensors(episodes: Sequence[Episode], artifact: PolicyArtifact, cost_scale: float) -> Batchable:
    x = artifact.normalise([artifact.schema.vector(s.observation) for e in episodes for s in e.steps])
    return episode_batch(episodes, x, lambda step: step.cost, cost_scale)


def episode_batch(episodes: Sequence[Episode], x: torch.Tensor, step_cost: Callable[[StepRecord], float],
                  cost_scale: float) -> Batchable:
    """The episodes' steps as tensors, given the network's normalised inputs ``x`` (one row per step)
    and the FLOPs ``step_cost`` charges each step (the reward is minus that, over ``cost_scale``)."""
    steps = [(e, s) for e in episodes for s in e.steps]
    starts, ends, position = [], [], 0
    for e in episodes:
        starts.append(position)
        position += len(e.steps)
        ends.append(position)
    last = {end - 1 for end in ends}
    return Batchable(
        x=x,
        action=torch.tensor([s.action for _, s in steps], dtype=torch.long),
        mu_escalate=torch.tensor([s.mu_escalate for _, s in steps], dtype=torch.float32),
        reward=torch.tensor([-step_cost(s) / cost_scale for _, s in steps], dtype=torch.float32),
        coverage=torch.tensor(
            [float(i in last and (e.reward == 1 or e.target_reward == 0)) for i, (e, _) in enumerate(steps)]
        ),
        draft_ok=torch.tensor([float(s.draft_correct is True) for _, s in steps]),
        escalated_ok=torch.tensor([float(s.escalated_correct is True) for _, s in steps]),
        starts=starts,
        ends=ends,
        episode_reward=[e.reward for e in episodes],
        target_reward=[e.target_reward for e in episodes],
    )


def decisions_batch(x: torch.Tensor, action: torch.Tensor, mu: torch.Tensor, reward: Sequence[float],
                    sizes: Sequence[int], covered: Sequence[bool], target_reward: Sequence[int]) -> Batchable:
    """Replayed decisions (``sizes[i]`` of them for episode i, in order) as the per-step tensors ``episode_targets``
    reads: ``mu`` is μ of the action taken, the coverage indicator ``covered[i]`` sits on episode i's last decision."""
    ends = list(itertools.accumulate(sizes))
    coverage = torch.zeros(len(action))
    coverage[[end - 1 for end in ends]] = torch.tensor([float(c) for c in covered])
    empty = torch.zeros(len(action))
    return Batchable(x=x, action=action, mu_escalate=mu, reward=torch.tensor(reward), coverage=coverage, draft_ok=empty,
                     escalated_ok=empty, starts=[end - n for end, n in zip(ends, sizes)], ends=ends,
                     episode_reward=[0] * len(sizes), target_reward=list(target_reward))


# --- 2. V-trace ----------------------------------------------------------------------------------


def vtrace_targets(rewards: torch.Tensor, values: torch.Tensor, bootstrap_value: float, rhos: torch.Tensor,
                   cs: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace targets v_s and policy-gradient advantages for one episode (Espeholt et al. 2018).

    δ_t = ρ_t (r_t + γ V(x_{t+1}) − V(x_t));  v_t = V(x_t) + δ_t + γ c_t (v_{t+1} − V(x_{t+1}));
    A_t = ρ_t (r_t + γ v_{t+1} − V(x_t)), with V and v after the last step = ``bootstrap_value``.
    ``rhos`` and ``cs`` are the already truncated importance weights.
    """
    n = rewards.shape[0]
    next_values = torch.cat([values[1:], values.new_tensor([bootstrap_value])])
    deltas = rhos * (rewards + gamma * next_values - values)
    vs = torch.empty_like(values)
    correction = values.new_tensor(0.0)  # v_{t+1} − V(x_{t+1})
    for t in reversed(range(n)):
        correction = deltas[t] + gamma * cs[t] * correction
        vs[t] = values[t] + correction
    next_vs = torch.cat([vs[1:], values.new_tensor([bootstrap_value])])
    advantages = rhos * (rewards + gamma * next_vs - values)
    return vs, advantages


def episode_targets(data: Batchable, batch: Sequence[int], v_cost: torch.Tensor, v_cov: torch.Tensor,
                    rhos: torch.Tensor, cs: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """V-trace targets and advantages of the cost and coverage critics over a batch of episodes.

    ``v_cost``, ``v_cov``, ``rhos`` and ``cs`` are over the batch's steps, episode after episode;
    ``start_coverage`` is the coverage target at each episode's first step.
    """
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("vs_cost", "adv_cost", "vs_coverage", "adv_coverage")}
    starts = []
    offset = 0
    for e in batch:
        lo, hi = data.starts[e], data.ends[e]
        sl = slice(offset, offset + hi - lo)
        starts.append(offset)
        vs, adv = vtrace_targets(data.reward[lo:hi], v_cost[sl], 0.0, rhos[sl], cs[sl], gamma)
        out["vs_cost"].append(vs)
        out["adv_cost"].append(adv)
        vs, adv = vtrace_targets(data.coverage[lo:hi], v_cov[sl], 0.0, rhos[sl], cs[sl], gamma)
        out["vs_coverage"].append(vs)
        out["adv_coverage"].append(adv)
        offset += hi - lo
    result = {k: torch.cat(v) for k, v in out.items()}
    result["start_coverage"] = result["vs_coverage"][starts]
    return result


# --- 3. trust region -----------------------------------------------------------------------------


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       tol: float = 1e-10) -> torch.Tensor:
    """Solve A x = b for a symmetric positive-definite A given only x ↦ A x."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        step = rr / (p @ ap + EPS)
        x += step * p
        r -= step * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def _flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.data.reshape(-1) for p in net.parameters()])


def _set_flat_params(net: torch.nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in net.parameters():
        p.data.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def _flat_grad(y: torch.Tensor, net: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
    grads = torch.autograd.grad(y, list(net.parameters()), **kwargs)
    return torch.cat([g.reshape(-1) for g in grads])


def mean_kl(net: torch.nn.Module, x: torch.Tensor, old_log_probs: torch.Tensor) -> torch.Tensor:
    """Mean KL(π_old || π_θ) over the observations."""
    log_probs = torch.log_softmax(net(x), dim=-1)
    return (old_log_probs.exp() * (old_log_probs - log_probs)).sum(-1).mean()


class CPOCase(IntEnum):
    """Which CPO step was taken (the case numbers of Achiam et al.'s reference code, logged as ``charts/cpo_case``).

    With c the constraint's current violation (miss rate − α) and the trust region ½ xᵀHx ≤ δ:
    """

    INFEASIBLE_RECOVERY = 0
    """c > 0 and no point of the trust region satisfies the constraint: step only to reduce the violation"""
    INFEASIBLE_DUAL = 1
    """c ≥ 0 but part of the trust region is feasible: both constraints may bind, solved by the dual"""
    FEASIBLE_DUAL = 2
    """c < 0 and the constraint cuts the trust region: both constraints may bind, solved by the dual"""
    FEASIBLE_UNCONSTRAINED = 3
    """c < 0 and the whole trust region is feasible: a plain natural-gradient step"""
    NO_CONSTRAINT_GRADIENT = 4
    """the constraint's gradient vanishes: a plain natural-gradient (TRPO) step"""


def cpo_direction(g: torch.Tensor, b: torch.Tensor, c: float, hinv: Callable[[torch.Tensor], torch.Tensor],
                  delta: float) -> tuple[torch.Tensor, CPOCase, float]:
    """The CPO step for: maximise gᵀx  s.t.  bᵀx + c ≤ 0,  ½ xᵀHx ≤ δ (Achiam et al. 2017, app. 10.2).

    Returns the step, its case, and the Lagrange multiplier ν of the coverage constraint (NaN
    in recovery, where there is no dual).
    """
    hg = hinv(g)
    q = float(g @ hg)
    if float(b @ b) < 1e-12:
        return math.sqrt(2 * delta / (q + EPS)) * hg, CPOCase.NO_CONSTRAINT_GRADIENT, 0.0
    hb = hinv(b)
    r, s = float(g @ hb), float(b @ hb)
    A, B = q - r * r / (s + EPS), 2 * delta - c * c / (s + EPS)
    if c < 0 and B < 0:
        return math.sqrt(2 * delta / (q + EPS)) * hg, CPOCase.FEASIBLE_UNCONSTRAINED, 0.0
    if c > 0 and B < 0:
        return -math.sqrt(2 * delta / (s + EPS)) * hb, CPOCase.INFEASIBLE_RECOVERY, float("nan")
    # Both constraints may bind: solve the 1-D dual over λ.
    bound = r / c if abs(c) > EPS else math.inf
    interval_a, interval_b = ((0.0, bound), (bound, math.inf)) if c < 0 else ((bound, math.inf), (0.0, bound))

    def project(value: float, interval: tuple[float, float]) -> float:
        return max(interval[0], min(interval[1], value))

    lam_a = project(math.sqrt(max(A, 0.0) / (B + EPS)), interval_a)
    lam_b = project(math.sqrt(q / (2 * delta)), interval_b)
    f_a = -0.5 * (A / (lam_a + EPS) + B * lam_a) - r * c / (s + EPS)
    f_b = -0.5 * (q / (lam_b + EPS) + 2 * delta * lam_b)
    lam = lam_a if f_a >= f_b else lam_b
    nu = max(0.0, lam * c - r) / (s + EPS)
    return (hg - nu * hb) / (lam + EPS), CPOCase.INFEASIBLE_DUAL if c >= 0 else CPOCase.FEASIBLE_DUAL, nu


def trust_region_step(policy: torch.nn.Module, x: torch.Tensor, action: torch.Tensor, cost_adv: torch.Tensor,
                      miss_adv: torch.Tensor, miss_value: float, args: CPOArgs) -> dict[str, float]:
    """One CPO update of ``policy`` in place; returns the achieved KL, whether the step was taken,
    the CPO case (as its number) and the Lagrange multiplier.

    ``cost_adv`` are advantages of the reward −cost (to increase); ``miss_adv`` advantages of the
    constraint cost 1 − coverage, whose current value ``miss_value`` must stay ≤ α.
    """
    with torch.no_grad():
        old_log_probs = torch.log_softmax(policy(x), dim=-1)
    old_logp_a = old_log_probs.gather(1, action[:, None]).squeeze(1)

    def surrogates() -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = torch.log_softmax(policy(x), dim=-1)
        ratio = torch.exp(log_probs.gather(1, action[:, None]).squeeze(1) - old_logp_a)
        objective = (ratio * cost_adv).mean()
        if args.entropy_coef:  # a bonus for uncertainty keeps the logits, hence κ, on a readable scale
            objective = objective - args.entropy_coef * (log_probs.exp() * log_probs).sum(-1).mean()
        return objective, (ratio * miss_adv).mean()

    objective, constraint = surrogates()
    g = _flat_grad(objective, policy, retain_graph=True)
    b = _flat_grad(constraint, policy)

    def fisher_vector(v: torch.Tensor) -> torch.Tensor:
        kl = mean_kl(policy, x, old_log_probs)
        grad = _flat_grad(kl, policy, create_graph=True)
        return _flat_grad(grad @ v, policy) + args.cg_damping * v

    def hinv(v: torch.Tensor) -> torch.Tensor:
        return conjugate_gradient(fisher_vector, v, args.cg_iters)

    c = miss_value - args.alpha
    direction, case, nu = cpo_direction(g, b, c, hinv, args.delta)
    old_params = _flat_params(policy)
    accepted, kl_value = False, 0.0
    for shrink in (0.5**i for i in range(args.backtrack_iters)):
        _set_flat_params(policy, old_params + shrink * direction)
        with torch.no_grad():
            kl_value = float(mean_kl(policy, x, old_log_probs))
            new_objective, new_constraint = surrogates()
        # Recovery ignores the objective: any step that reduces the violation within the region will do.
        improves = case is CPOCase.INFEASIBLE_RECOVERY or float(new_objective) >= objective.item() - 1e-8
        keeps_constraint = float(new_constraint) - constraint.item() <= max(-c, 0.0) + 1e-8
        if kl_value <= args.delta and improves and keeps_constraint:
            accepted = True
            break
    if not accepted:
        _set_flat_params(policy, old_params)
        kl_value = 0.0
    return {"kl": kl_value, "accepted": float(accepted), "case": float(case), "lagrange_multiplier": nu}


# --- 4. κ ---------------------------------------------------------------------------------------


def update_kappa(kappa: float, miss: bool, alpha: float, eta: float) -> float:
    """Online-conformal step in the gate convention: a miss lowers κ (more escalation)."""
    return min(1.0, max(0.0, kappa - eta * (float(miss) - alpha)))


def gate_choices(data: Batchable, episode: int, policy: PolicyNetwork, kappa: float) -> torch.Tensor:
    """Γ(o_t) = 1{π(escalate | o_t) ≥ κ} on every recorded step of one episode."""
    lo, hi = data.starts[episode], data.ends[episode]
    with torch.no_grad():
        return (policy.escalate_probability(data.x[lo:hi]) >= kappa).long()


def episode_miss(data: Batchable, episode: int, choice: torch.Tensor) -> bool:
    """Local-verification surrogate of a miss for gate choices Γ(o_t) on a recorded episode.

    Covered when R_M = 0; or when Γ repeats the behaviour's actions and the recorded answer was
    right; or when, walking the steps in order, every step Γ keeps (the draft, or the escalated
    step) is verified correct. The walk stops early, covered, where Γ keeps a correct step that
    the behaviour did not (it replaced a wrong draft, or kept a right one the behaviour wrongly
    replaced): the recorded steps after it continue a prefix Γ would not have written.
    """
    if data.target_reward[episode] == 0:
        return False
    lo, hi = data.starts[episode], data.ends[episode]
    actions = data.action[lo:hi]
    if bool((choice == actions).all()) and data.episode_reward[episode] == 1:
        return False
    verified = torch.where(choice == 1, data.escalated_ok[lo:hi], data.draft_ok[lo:hi])
    kept = torch.where(actions == 1, data.escalated_ok[lo:hi], data.draft_ok[lo:hi])
    for t in range(hi - lo):
        if verified[t] != 1:
            return True
        if choice[t] != actions[t] and kept[t] != 1:
            return False
    return False


def surrogate_miss(data: Batchable, episode: int, policy: PolicyNetwork, kappa: float) -> bool:
    """``episode_miss`` for the threshold policy Γ(o) = 1{π(escalate | o) ≥ κ}."""
    return episode_miss(data, episode, gate_choices(data, episode, policy, kappa))


def score_coverage(data: Batchable, scores: torch.Tensor, kappa: float) -> float:
    """1 − the surrogate miss rate of Γ(o) = 1{score(o) ≥ κ}, given every step's score."""
    n = len(data.starts)
    return 1.0 - sum(episode_miss(data, e, (scores[data.starts[e] : data.ends[e]] >= kappa).long()) for e in range(n)) / n


def calibrate_kappa(data: Batchable, policy: PolicyNetwork, alpha: float, max_candidates: int = 400,
                    scale: str = "probability") -> tuple[float, float]:
    """The largest κ whose surrogate miss rate on held-out episodes meets the conformal bound.

    With n calibration episodes, κ is accepted when misses ≤ ⌊α(n + 1)⌋ − 1, the finite-sample
    correction of split conformal calibration. ``scale`` says what κ thresholds: π(escalate | o)
    or its log-odds (``"log_odds"``). Returns (κ, its miss rate).
    """
    with torch.no_grad():
        scores = policy.escalate_log_odds(data.x) if scale == "log_odds" else policy.escalate_probability(data.x)
    n = len(data.starts)
    allowed = math.floor(alpha * (n + 1)) - 1
    candidates = torch.unique(scores)
    if candidates.numel() > max_candidates:
        candidates = torch.quantile(scores, torch.linspace(0, 1, max_candidates))
    top, bottom = (math.floor(float(scores.max())) + 1.0, math.floor(float(scores.min()))) if scale == "log_odds" else (1.0, 0.0)
    for kappa in sorted({float(c) for c in candidates} | {top}, reverse=True):
        choice = (scores >= kappa).long()
        misses = sum(episode_miss(data, e, choice[data.starts[e] : data.ends[e]]) for e in range(n))
        if misses <= allowed:
            return kappa, misses / n
    return bottom, sum(episode_miss(data, e, torch.ones(data.ends[e] - data.starts[e], dtype=torch.long)) for e in range(n)) / n


# --- 5. the loop: sample, fit critics, trust-region step, κ update, finalise ---------------------


def _critic(n_features: int, hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(n_features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, 1),
    )


@dataclass
class Run:
    """What a training loop carries from update to update; every loop (2-tier and K-tier policy, allocator) uses it.

    ``data`` is the loop's tensors (``Batchable`` here; ``cpo_tiers.TierData`` and
    ``allocator_tiers.AllocatorTierData`` in the K-tier loops), ``policy`` the network being trained.
    """

    args: CPOArgs
    data: Any
    artifact: Any
    policy: Any
    cost_critic: torch.nn.Module
    coverage_critic: torch.nn.Module
    optimiser: torch.optim.Optimizer
    rng: random.Random
    cost_scale: float
    kappa: float


def new_run(args: CPOArgs, data: Any, artifact: Any, policy: torch.nn.Module, cost_scale: float) -> Run:
    """A run at κ's initial value, with fresh cost and coverage critics on ``data.x``'s rows and their optimiser.

    The critics are drawn from torch's generator where this is called: callers seed it once, then
    build the policy (and fit it, if they warm-start), then call this.
    """
    width = data.x.shape[-1]
    cost_critic, coverage_critic = _critic(width, args.hidden), _critic(width, args.hidden)
    optimiser = torch.optim.Adam([*cost_critic.parameters(), *coverage_critic.parameters()], lr=args.critic_lr)
    return Run(args, data, artifact, policy, cost_critic, coverage_critic, optimiser, random.Random(args.seed), cost_scale,
               args.kappa_init)


@dataclass
class Batch:
    """A sample of episodes of ``data``: their steps, the actions taken and the truncated importance weights."""

    episodes: list[int]
    x: torch.Tensor
    action: torch.Tensor
    rhos: torch.Tensor  # min(ρ̄, π(a|o) / μ(a|o))
    cs: torch.Tensor  # min(c̄, π(a|o) / μ(a|o))
    data: Batchable  # the per-step tensors ``episodes`` index (the recorded steps, or a replay)


def with_steps(episodes: Sequence[Episode], trainer: str) -> list[Episode]:
    """The episodes that have steps; a clear error when none has."""
    kept = [e for e in episodes if e.steps]
    if not kept:
        raise ValueError(f"{trainer} needs at least one episode with steps; collect traces first.")
    return kept


def start_run(episodes: Sequence[Episode], args: CPOArgs, schema: FeatureSchema, ignore_features: Sequence[str]) -> Run:
    """Check the input, seed, normalise the features and build the policy, critics and tensors."""
    if unknown := sorted(set(ignore_features) - set(schema.names)):
        raise ValueError(f"ignore_features {unknown} are not features of {schema}.")
    episodes = with_steps(episodes, "train_policy")
    torch.manual_seed(args.seed)  # the policy first, then the two critics: the order fixes the weights
    mean, std, ignored = normalisation(episodes, schema, ignore_features)
    policy = PolicyNetwork(len(schema.names), args.hidden, args.layers)
    artifact = PolicyArtifact(policy, kappa_from_probability(args.kappa_init), args.alpha, schema, mean, std, args.hidden,
                              args.layers, ignored=ignored)
    cost_scale = sum(e.target_flops for e in episodes) / len(episodes) or 1.0
    data = to_tensors(episodes, artifact, cost_scale)
    if args.warm_start:
        warm_start(policy, data, args.warm_start)
    return new_run(args, data, artifact, policy, cost_scale)


def supervised_stage(network: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float) -> list[float]:
    """Cross-entropy of ``network(x)`` on ``labels`` by full-batch Adam (R2-Reasoner's first stage); the loss per epoch."""
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(network(x), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def warm_start(policy: PolicyNetwork, data: Batchable, steps: int) -> None:
    """Fit the escalation logit to "the draft is wrong" (a verdict of None counts as wrong) by logistic loss.

    CPO then starts from a policy that already ranks drafts by their chance of being wrong, on a
    log-odds scale of a few units, instead of from random weights it would push to saturation.
    """
    optimiser = torch.optim.Adam(policy.parameters(), lr=1e-2)
    wrong = 1.0 - data.draft_ok
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(policy.escalate_log_odds(data.x), wrong).backward()
        optimiser.step()


def sample_batch(run: Run) -> Batch:
    """Draw episodes and weigh their recorded actions by π(a | o) / μ(a | o), truncated."""
    n = len(run.data.starts)
    episodes = run.rng.sample(range(n), min(run.args.batch_size, n))
    index = torch.cat([torch.arange(run.data.starts[e], run.data.ends[e]) for e in episodes])
    x, action = run.data.x[index], run.data.action[index]
    with torch.no_grad():
        pi_a = torch.softmax(run.policy(x), dim=-1).gather(1, action[:, None]).squeeze(1)
        mu_escalate = run.data.mu_escalate[index]
        mu_a = torch.where(action == 1, mu_escalate, 1 - mu_escalate).clamp_min(1e-3)
        ratio = pi_a / mu_a
    return Batch(episodes, x, action, ratio.clamp(max=run.args.rho_bar), ratio.clamp(max=run.args.c_bar), run.data)


def _batch_targets(run: Run, batch: Batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        v_cost, v_cov = run.cost_critic(batch.x).squeeze(1), run.coverage_critic(batch.x).squeeze(1)
        return episode_targets(batch.data, batch.episodes, v_cost, v_cov, batch.rhos, batch.cs, run.args.gamma)


def fit_critics(run: Run, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Regress both critics on V-trace targets (recomputed after each step); return the final
    targets and the last losses."""
    losses = {"losses/critic_cost": math.nan, "losses/critic_constraint": math.nan}
    for _ in range(run.args.critic_updates):
        targets = _batch_targets(run, batch)
        loss_cost = ((run.cost_critic(batch.x).squeeze(1) - targets["vs_cost"]) ** 2).mean()
        loss_cov = ((run.coverage_critic(batch.x).squeeze(1) - targets["vs_coverage"]) ** 2).mean()
        run.optimiser.zero_grad()
        (loss_cost + loss_cov).backward()
        run.optimiser.step()
        losses = {"losses/critic_cost": loss_cost.item(), "losses/critic_constraint": loss_cov.item()}
    return _batch_targets(run, batch), losses


def policy_step(run: Run, batch: Batch, targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """The CPO trust-region step of π against the critics' advantages."""
    miss_value = 1.0 - float(targets["start_coverage"].mean().clamp(0, 1))
    miss_adv = -targets["adv_coverage"]  # constraint cost = 1 − coverage
    info = trust_region_step(run.policy, batch.x, batch.action, targets["adv_cost"], miss_adv, miss_value, run.args)
    return {"charts/kl": info["kl"], "charts/accepted": info["accepted"], "charts/cpo_case": info["case"],
            "charts/lagrange_multiplier": info["lagrange_multiplier"], "charts/estimated_miss": miss_value}


def kappa_step(run: Run, batch: Batch) -> dict[str, float]:
    """The online-conformal κ update over the batch's surrogate misses (all judged at the old κ)."""
    metrics = kappa_updates(run, [surrogate_miss(run.data, e, run.policy, run.kappa) for e in batch.episodes])
    with torch.no_grad():
        escalate_rate = float((run.policy.escalate_probability(run.data.x) >= run.kappa).float().mean())
    return metrics | {"charts/escalation_rate": escalate_rate}


def kappa_updates(run: Run, misses: Sequence[bool]) -> dict[str, float]:
    """The online-conformal κ update for each of the batch's misses, in order."""
    for miss in misses:
        run.kappa = update_kappa(run.kappa, miss, run.args.alpha, run.args.eta)
    return {"charts/kappa": run.kappa, "charts/batch_misses": float(sum(misses))}


def update(run: Run) -> dict[str, float]:
    """One update on recorded steps: sample, fit the critics, trust-region step, κ update."""
    batch = sample_batch(run)
    targets, losses = fit_critics(run, batch)
    return losses | policy_step(run, batch, targets) | kappa_step(run, batch)


def replay_update(run: Run, replay: Batchable, pi_a: torch.Tensor, misses: Callable[[], list[bool]]) -> dict[str, float]:
    """One update on a replay (the K-tier loops'): fit the critics and take the trust-region step on all its episodes,
    weighed by π(a | o) / μ(a | o) (``replay.mu_escalate`` holds μ of the action taken); then κ on ``misses()``, the
    updated policy's."""
    ratio = pi_a / replay.mu_escalate.clamp_min(1e-3)
    batch = Batch(list(range(len(replay.starts))), replay.x, replay.action, ratio.clamp(max=run.args.rho_bar),
                  ratio.clamp(max=run.args.c_bar), replay)
    targets, losses = fit_critics(run, batch)
    return losses | policy_step(run, batch, targets) | kappa_updates(run, misses())


def train_loop(run: Run, step: Callable[[Run], dict[str, float]], desc: str, progress: bool,
               log: Callable[[int, dict], object] | None) -> list[dict[str, float]]:
    """``run.args.steps`` updates by ``step``; returns the metrics of each, also passed to ``log``."""
    history = []
    for index in tqdm(range(run.args.steps), desc=desc, disable=not progress or not run.args.steps):  # no "0it" bar
        history.append(step(run))
        if log is not None:
            log(index, history[-1])
    return history


def finalise(run: Run, calibration: Sequence[Episode]) -> PolicyArtifact:
    """Set κ (online, or calibrated on held-out episodes) and record the training summary."""
    artifact, policy = run.artifact, run.policy
    # The artifact's κ is on the log-odds scale: the online κ, a probability (its rule may rest on float32
    # rounding to 0 or 1), converted once; a κ calibrated on held-out episodes is searched on that scale.
    artifact.kappa = kappa_from_probability(run.kappa)
    calibration_summary: dict[str, float] = {}
    held_out = [e for e in calibration if e.steps]
    if held_out:
        artifact.kappa, miss_rate = calibrate_kappa(to_tensors(held_out, artifact, run.cost_scale), policy, run.args.alpha,
                                                    scale="log_odds")
        calibration_summary = {"online_kappa": kappa_from_probability(run.kappa), "calibrated_kappa": artifact.kappa,
                               "calibration_episodes": len(held_out), "calibration_surrogate_miss": miss_rate}
    escalation_rate = float((artifact.scores(run.data.x) >= artifact.kappa).float().mean())
    artifact.training = {
        **calibration_summary,
        "algorithm": "cpo+online-conformal-kappa",
        "args": asdict(run.args),
        "episodes": len(run.data.starts),
        "cost_scale_flops": run.cost_scale,
        "escalation_rate": escalation_rate,
        "surrogate_coverage": score_coverage(run.data, artifact.scores(run.data.x), artifact.kappa),
    }
    policy.eval()
    return artifact


def train_policy(episodes: Sequence[Episode], args: CPOArgs | None = None, schema: FeatureSchema = FEATURE_SCHEMA,
                 progress: bool = True, log: Callable[[int, dict], None] | None = None,
                 calibration: Sequence[Episode] = (), ignore_features: Sequence[str] = ()) -> tuple[PolicyArtifact, list[dict[str, float]]]:
    """Train π and κ on behaviour episodes; return the policy artifact and per-step metrics.

    With ``calibration`` episodes (a held-out split), the online κ is replaced by the κ that
    ``calibrate_kappa`` finds on them; both are recorded in the artifact's training summary.
    ``ignore_features`` are hidden from the network, for a policy that must serve a backend that
    lacks them (e.g. ``api_confidence`` on a vLLM engine reporting raw logits).
    """
    run = start_run(episodes, args or CPOArgs(), schema, ignore_features)
    history = train_loop(run, update, "cpo", progress, log)
    return finalise(run, calibration), history
