"""Train the ex-ante allocator from the collected traces, in R2-Reasoner's two stages, then calibrate κ.

Read top to bottom:

1. each recorded step becomes the allocator's observation before it (``stepgraph.routing.allocator``:
   the question and the accepted prefix, no draft) and a label: the cheapest tier whose step the
   exact verifier accepts (tier 0 when the draft is verified, else the next tier, which wrote the
   recorded escalated step; a record that carries ``tier_correct``, one verdict per tier, gives
   the label for K tiers);
2. supervised stage: cross-entropy on those labels;
3. RL stage: CPO under the coverage constraint with ``stepgraph.training.learning.cpo``'s building
   blocks (V-trace critics, the trust-region step by conjugate gradient, the online-conformal κ
   update). The behaviour's recorded action (did a stronger tier write the step) and
   μ(escalate | o) weigh the off-policy returns; the cost of a step is what it costs *ex ante*:
   the draft call when the draft tier writes it, only the stronger tier's call when it is sent
   up (no draft is paid for);
4. calibration: the cheapest κ whose surrogate misses on held-out episodes meet split
   conformal's bound ⌊α(n + 1)⌋ − 1 (``cpo.episode_miss``, ``guarantee.calibration_guarantee``).
   With a post-hoc gate (``gate=``), a step the allocator keeps on tier 0 is still checked by
   that gate, and κ is calibrated for the combination. Both the supervised and the RL-refined
   weights are calibrated, and the cheaper at the coverage bound is kept (``selected_stage``):
   on the testbed the RL stage, whose coverage critic sees off-policy returns only, drifts toward
   drafting everything and loses the supervised ranking, and calibration then has to send more up.

On 2-tier records (draft and the next tier) the replay and calibration above use the recorded
draft and escalated steps; on traces with every tier's step (``StepRecord.tiers``) the labels,
replay, RL stage and calibration run over the K recorded tiers (``allocator_tiers``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from stepgraph.training.calibration.calibrate import replay_inputs
from stepgraph.training.calibration.guarantee import allowed_misses
from stepgraph.training.data.records import Episode, StepRecord
from stepgraph.training.learning.allocator_stages import (
    calibration_stage,
    episode_observations,
    new_allocator,
    supervised,
)
from stepgraph.training.learning.allocator_tiers import check_columns, has_tier_tables, train_tier_allocator
from stepgraph.training.learning.cpo import (
    Batchable,
    CPOArgs,
    episode_batch,
    episode_miss,
    new_run,
    train_loop,
    update,
    with_steps,
)

from stepgraph.artifacts.policy import PolicyArtifact
from stepgraph.errors import ConfigError
from stepgraph.routing.allocator import ALLOCATOR_SCHEMA
from stepgraph.routing.gates.base import Gate
from stepgraph.routing.learned_allocator import AllocatorArtifact, AllocatorNetwork

# --- 1. data -------------------------------------------------------------------------------------


def cheapest_accepted_tier(step: StepRecord, n_tiers: int = 2) -> int:
    """The label: the cheapest tier whose step the verifier accepts; the strongest when none is."""
    verdicts = getattr(step, "tier_correct", None)
    if verdicts is None:
        verdicts = [step.draft_correct, step.escalated_correct]
    for tier, ok in enumerate(list(verdicts)[:n_tiers]):
        if ok is True:
            return tier
    return n_tiers - 1


def ex_ante_cost(step: StepRecord, sent_up: bool, fallback_flops: float) -> float:
    """FLOPs of the step when the allocator drafts it (the draft call) or sends it up (only the stronger call)."""
    escalate = step.escalate_flops if step.escalate_flops is not None else fallback_flops
    return escalate if sent_up else step.draft_flops


def to_batchable(episodes: Sequence[Episode], artifact: AllocatorArtifact, cost_scale: float) -> Batchable:
    """The episodes as CPO's per-step tensors, with the allocator's observations and ex-ante costs."""
    rows = [ALLOCATOR_SCHEMA.vector(o) for e in episodes for o in episode_observations(e)]
    return episode_batch(episodes, artifact.normalise(rows), lambda s: ex_ante_cost(s, bool(s.action), cost_scale), cost_scale)


# --- 2. calibration ------------------------------------------------------------------------------


def gate_escalations(episodes: Sequence[Episode], gate: Gate) -> torch.Tensor:
    """The post-hoc gate's decision on every recorded draft, replayed (1 = escalate)."""
    return torch.tensor([int(gate.decide(x).escalate) for e in episodes for x in replay_inputs(e)], dtype=torch.long)


def calibrate_allocator(data: Batchable, episodes: Sequence[Episode], network: AllocatorNetwork, alpha: float,
                        gate_choice: torch.Tensor | None = None, max_candidates: int = 100) -> dict[str, Any]:
    """The cheapest κ whose surrogate misses on the held-out episodes are ≤ ⌊α(n + 1)⌋ − 1.

    A step is sent up when P(a stronger tier is needed) ≥ κ; with ``gate_choice`` a step kept on
    the draft tier is escalated where the post-hoc gate escalates it. The cost of a κ is the
    replayed ex-ante cost of its choices (draft call, stronger call, or both). Returns κ, its
    misses, cost relative to the strongest tier alone, the share of steps sent up, and the misses
    and cost of sending none up (``none_sent_up``), for comparison.
    """
    with torch.no_grad():
        p_up = network.escalate_probability(data.x)
    n = len(data.starts)
    allowed = allowed_misses(alpha, n)
    steps = [s for e in episodes for s in e.steps]
    target_flops = sum(e.target_flops for e in episodes) or 1.0
    fallback = target_flops / max(1, len(steps))
    candidates = torch.unique(p_up)
    if candidates.numel() > max_candidates:
        candidates = torch.quantile(p_up, torch.linspace(0, 1, max_candidates))
    trials = []
    for kappa in sorted({float(c) for c in candidates} | {0.0, 1.0 + 1e-9}, reverse=True):
        up = (p_up >= kappa).long()
        choice = up if gate_choice is None else torch.maximum(up, gate_choice)
        misses = sum(episode_miss(data, e, choice[data.starts[e] : data.ends[e]]) for e in range(n))
        cost = sum(ex_ante_cost(s, bool(u), fallback) + (s.escalate_flops or fallback) * float(bool(c) and not u)
                   for s, u, c in zip(steps, up.tolist(), choice.tolist()))
        trials.append({"kappa": min(kappa, 1.0), "misses": misses, "flops_vs_target": cost / target_flops,
                       "sent_up": float(up.float().mean())})
    feasible = [t for t in trials if t["misses"] <= allowed]
    best = min(feasible, key=lambda t: t["flops_vs_target"]) if feasible else trials[-1]  # κ = 0: everything sent up
    never = trials[0]  # the highest κ: no step sent up (the post-hoc gate alone, or the draft alone)
    return {**best, "met": bool(feasible), "episodes": n, "none_sent_up": {k: never[k] for k in ("misses", "flops_vs_target")}}


# --- 3. the two stages and the calibration -------------------------------------------------------


def train_allocator(episodes: Sequence[Episode], args: CPOArgs | None = None, *, tiers: Sequence[dict[str, Any]],
                    calibration: Sequence[Episode] = (), gate: Gate | None = None, columns: Sequence[int] | None = None,
                    supervised_epochs: int = 100,
                    supervised_lr: float = 1e-2, progress: bool = False,
                    log: Callable[[int, dict], object] | None = None) -> AllocatorArtifact:
    """Supervised, then CPO, then calibrated κ; returns the artifact (not yet saved).

    Args:
        episodes: train episodes (collected traces).
        args: CPO's settings for the RL stage (``steps=0`` skips it) and α.
        tiers: name and parameters of each tier, cheapest first (recorded in the artifact).
        calibration: held-out episodes for κ; without them κ is the RL stage's online κ, with no guarantee.
        gate: the post-hoc gate the allocator will be combined with (its replayed decisions enter the calibration);
            on traces with tier tables a policy gate whose network reads the tier, over the same tiers.
        columns: on traces with tier tables, the recorded tiers to allocate among (default: all), e.g. ``[0, 2]``.
        supervised_epochs, supervised_lr: the supervised stage's full-batch Adam epochs and learning rate.
    """
    args = args or CPOArgs()
    episodes = with_steps(episodes, "train_allocator")
    if len(tiers) < 2:
        raise ValueError(f"An allocator chooses among at least two tiers, got {len(tiers)}.")
    if has_tier_tables(episodes):  # every tier's step is recorded: labels, replay and κ over the tiers ``columns``
        policy = getattr(gate, "artifact", None)
        policy = policy if isinstance(policy, PolicyArtifact) and policy.network.tier_input else None
        if gate is not None and policy is None:
            raise ConfigError(f"On traces with tier tables the post-hoc gate must be a K-tier policy (network.tier_input) "
                              f"over the allocator's tiers, got {getattr(gate, 'name', type(gate).__name__)}.")
        return train_tier_allocator(episodes, args, tiers=tiers, columns=columns, calibration=calibration, policy=policy,
                                    supervised_epochs=supervised_epochs, supervised_lr=supervised_lr, progress=progress, log=log)
    if columns is not None:
        raise ConfigError("columns (--allocator-columns) choose among recorded tier tables, and these traces have none; "
                          "collect them with every tier's step (`collect(..., record_tiers=True)`).")
    artifact = new_allocator(episodes, args, tiers)
    network = artifact.network
    labels = torch.tensor([cheapest_accepted_tier(s, len(tiers)) for e in episodes for s in e.steps])
    cost_scale = sum(e.target_flops for e in episodes) / len(episodes) or 1.0
    data = to_batchable(episodes, artifact, cost_scale)
    supervised_weights, supervised_summary = supervised(network, data.x, labels, supervised_epochs, supervised_lr)
    run = new_run(args, data, artifact, network, cost_scale)
    history = train_loop(run, update, "allocator rl", progress, log)

    def calibrator(held_out: list[Episode]) -> Callable[[], dict[str, Any]]:
        cal, gate_choice = to_batchable(held_out, artifact, cost_scale), gate_escalations(held_out, gate) if gate else None
        return lambda: calibrate_allocator(cal, held_out, network, args.alpha, gate_choice)

    summary = calibration_stage(run, supervised_weights, calibration, calibrator)
    kappa = torch.sigmoid(torch.tensor(artifact.kappa, dtype=torch.float64)).item()  # the replays' probability scale
    with torch.no_grad():
        sent_up = float((network.escalate_probability(data.x) >= kappa).float().mean())
    artifact.training = {
        **summary,
        "algorithm": "supervised+cpo+split-conformal-kappa",
        "args": asdict(args),
        **supervised_summary,
        "rl_accepted_steps": sum(h["charts/accepted"] for h in history),
        "combined_with_gate": getattr(gate, "name", None) if gate else None,
        "episodes": len(episodes),
        "cost_scale_flops": cost_scale,
        "train_sent_up": sent_up,
    }
    return artifact


# --- ``stepgraph train --allocator`` ---------------------------------------------------------------


def train_allocator_command(store_path: str | Path, out: Path, cpo_args: CPOArgs, *, split: str = "train",
                            calibration_split: str = "calibration", columns: Sequence[int] | None = None,
                            gate_dir: Path | None = None, supervised_epochs: int = 100,
                            supervised_lr: float = 1e-2) -> dict[str, Any]:
    """``stepgraph train --allocator``: read the store, train, calibrate, save in ``out``; the summary as a dict.
    ``gate_dir``: the post-hoc policy the combination's κ is calibrated for (default: the allocator alone)."""
    import json
    import time

    from stepgraph.training.data.store import TraceStore, redact

    from stepgraph.errors import StepgraphError
    from stepgraph.routing.gates import PolicyGate

    if supervised_epochs < 0 or not supervised_lr > 0:
        raise ConfigError("--supervised-epochs must be >= 0 and --supervised-lr > 0.")
    with TraceStore(store_path, readonly=True) as store:
        episodes = list(store.episodes(split=split))
        calibration = list(store.episodes(split=calibration_split)) if calibration_split else []
        tiers = store.meta("models") or []
    if not episodes:
        raise StepgraphError(f"{redact(store_path)} holds no {split} episodes; run `stepgraph collect` first.")
    if len(tiers) < 2:
        raise StepgraphError(f"{redact(store_path)} does not record its tiers (meta 'models'); collect it again with this stepgraph.")
    if has_tier_tables(episodes):
        columns = check_columns(columns, len(tiers), "--allocator-columns")
    elif columns is not None:
        raise ConfigError(f"--allocator-columns needs traces with every tier's step, and {redact(store_path)} has none "
                          "(collect with record_tiers, e.g. `stepgraph bench --tiers 3`); leave it out for 2-tier traces.")
    gate = PolicyGate.from_path(gate_dir) if gate_dir else None
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.jsonl").open("w") as log:
        artifact = train_allocator(episodes, cpo_args, tiers=tiers, calibration=calibration, gate=gate, columns=columns,
                                   supervised_epochs=supervised_epochs, supervised_lr=supervised_lr, progress=True,
                                   log=lambda step, m: log.write(json.dumps({"step": step, **m}) + "\n"))
    artifact.training |= {"store": redact(store_path), "seconds": round(time.time() - started, 1),
                          "allocator_gate": str(gate_dir) if gate_dir else None}
    artifact.save(out)
    keys = ("selected_stage", "supervised_accuracy", "online_kappa", "calibration_episodes", "calibration_surrogate_miss",
            "calibration_sent_up", "calibration_flops_vs_target", "train_sent_up", "seconds")
    return {"out": str(out), "kappa": artifact.kappa, "alpha": artifact.alpha, "guarantee": (artifact.guarantee or {}).get("type"),
            **{k: artifact.training[k] for k in keys if k in artifact.training}}
