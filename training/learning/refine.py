"""On-policy refinement of a policy: fit its escalation log-odds to the router's own decisions.

CPO and its supervised warm start learn from a behaviour gate's traces, so the network ranks steps
on the behaviour's paths. The router then meets its own prefixes, and at coverage ≥ 1 − α what
decides its cost is the tail: how many right steps it must escalate to catch the last few wrong
steps it is most confident in. Refining runs the router itself on train problems, labels every
decision it made with the step verifier (a wrong step should have been escalated), and fits each
deciding tier's log-odds of escalation to those labels by weighted cross-entropy, starting from the
policy's weights: one round of DAgger's data collection. The network, its normalisation and its
routing keep their shapes and formats; κ must be calibrated again on live runs
(``stepgraph calibrate --runs N``), so the refined artifact records no guarantee.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from stepgraph.training.collection.collect import Item
from stepgraph.training.collection.runs import answer_item, run_seed
from stepgraph.training.collection.verifiers import StepVerifier

from stepgraph.artifacts.policy import PolicyArtifact, tier_inputs
from stepgraph.context import RouterContext
from stepgraph.errors import ConfigError
from stepgraph.graph import build_graph
from stepgraph.models.base import StepModel
from stepgraph.routing.gates import PolicyGate
from stepgraph.routing.gates.base import Gate, GateDecision, GateInput


@dataclass(frozen=True)
class RefineArgs:
    """How the network is fitted to the recorded decisions."""

    epochs: int = 300
    """full-batch Adam steps"""
    lr: float = 3e-3
    """Adam's learning rate"""
    weight_decay: float = 1e-3
    """Adam's weight decay: keeps the fit near the policy it starts from"""
    pos_weight: float = 5.0
    """weight of a wrong step against a right one: the tail of wrong steps is what coverage pays for"""
    seed: int = 0
    """torch seed of the fit"""

    def __post_init__(self) -> None:
        if self.epochs < 1 or not self.lr > 0 or self.weight_decay < 0 or not self.pos_weight > 0:
            raise ConfigError(f"refine needs epochs ≥ 1, lr > 0, weight_decay ≥ 0 and pos_weight > 0; got {self}.")


@dataclass(frozen=True)
class Decision:
    """One decision the router's gate made: the step's features, the tier that wrote it, and whether the step was wrong."""

    features: list[float]
    tier: int
    wrong: bool


class _Recording(Gate):
    """Decides as the policy gate does, and notes each decision with the verifier's label of the step it was about."""

    name = "recording"

    def __init__(self, inner: PolicyGate, verifier: StepVerifier, references: dict[str, str]) -> None:
        self.inner, self.verifier, self.references = inner, verifier, references
        self.decisions: list[Decision] = []

    def score(self, x: GateInput) -> float:
        return self.inner.score(x)

    def decide(self, x: GateInput) -> GateDecision:
        decision = self.inner.decide(x)
        right = self.verifier.verify(x.question, self.references.get(x.question, ""), list(x.steps), x.draft.text)
        if right is not None and math.isfinite(decision.score):  # unlabelled, or a tier the policy does not route from
            self.decisions.append(Decision(self.inner.artifact.schema.vector(x.observation), x.tier, not right))
        return decision


def record_decisions(tiers: Sequence[StepModel], gate: PolicyGate, items: Sequence[Item], verifier: StepVerifier, *,
                     seed: int = 0, context: RouterContext | None = None, progress: bool = True) -> list[Decision]:
    """Run the routed graph over ``items`` (seeds as ``runs.run_gate``) and return every gate decision, labelled."""
    from tqdm import tqdm

    recorder = _Recording(gate, verifier, {item.question: item.reference for item in items})
    graph = build_graph(tiers, recorder)
    base = context or RouterContext()
    for index, item in enumerate(tqdm(items, desc="refine: routed runs", disable=not progress)):
        answer_item(graph, item, RouterContext(**{**vars(base), "seed": run_seed(seed, index)}), len(tiers))
    return recorder.decisions


def refit(artifact: PolicyArtifact, decisions: Sequence[Decision], args: RefineArgs = RefineArgs()) -> PolicyArtifact:
    """A copy of ``artifact`` whose network's log-odds of escalation is fitted to ``decisions`` (from its weights).

    Raises:
        ConfigError: no decision is labelled wrong or none right (there is nothing to separate).
    """
    wrong = sum(d.wrong for d in decisions)
    if wrong == 0 or wrong == len(decisions):
        raise ConfigError(f"refine needs both right and wrong steps among the router's decisions; got {wrong} wrong of "
                          f"{len(decisions)}. Run it on more problems.")
    network = copy.deepcopy(artifact.network)
    x = artifact.normalise([d.features for d in decisions])
    if network.tier_input:
        x = tier_inputs(x, torch.tensor([d.tier for d in decisions]), network.n_tiers)
    y = torch.tensor([float(d.wrong) for d in decisions])
    torch.manual_seed(args.seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(args.pos_weight))
    for _ in range(args.epochs):
        optimiser.zero_grad()
        loss = loss_fn(network.escalate_log_odds(x), y)
        loss.backward()
        optimiser.step()
    by_tier: dict[str, Any] = {}
    for tier in sorted({d.tier for d in decisions}):
        held = [d for d in decisions if d.tier == tier]
        by_tier[str(tier)] = {"decisions": len(held), "wrong": sum(d.wrong for d in held)}
    record = {**dataclasses.asdict(args), "decisions": by_tier, "final_loss": round(loss.item(), 6)}
    return dataclasses.replace(
        artifact, network=network, guarantee={"type": "none", "reason": "refined on the router's own runs: calibrate κ on live "
                                              "runs (stepgraph calibrate --runs N)"},
        training={**artifact.training, "refined": record})
