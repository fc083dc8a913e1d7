"""On-policy refinement (``training.learning.refine``, ``stepgraph refine``): the router's own decisions, labelled and fitted."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from scripted import ScriptedModel
from stepgraph.training.collection.collect import Item
from stepgraph.training.learning.refine import Decision, RefineArgs, record_decisions, refit

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork, kappa_from_probability
from stepgraph.cli import main
from stepgraph.errors import ConfigError
from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.routing.gates import PolicyGate

N = len(CONFIDENCE_SCHEMA.names)
TIERS = [{"name": "draft", "parameters": 10}, {"name": "mid", "parameters": 40}, {"name": "target", "parameters": 100}]
CONFIDENCE = CONFIDENCE_SCHEMA.names.index("logit_confidence")


def _policy(bias: list[float] | None = None) -> PolicyArtifact:
    """A 3-tier policy (κ at even odds, escalations one tier up): randomly initialised, or with logits ``bias`` whatever it observes."""
    torch.manual_seed(0)
    net = PolicyNetwork(N, 8, 2, 3, tier_input=True)
    if bias is not None:
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
            net.net[-1].bias.copy_(torch.tensor(bias))
    artifact = PolicyArtifact(net, kappa_from_probability(0.5), 0.02, CONFIDENCE_SCHEMA, [0.0] * N, [1.0] * N, 8, 2, TIERS,
                              ignored=["difficulty"],
                              guarantee={"type": "split-conformal", "coverage": 0.98, "calibration_episodes": 400})
    return artifact.with_routing("next")


class Verifier:
    """A step is wrong iff it says so; a boxed answer gets no verdict."""

    def verify(self, question, reference, prior_steps, step):
        return None if "boxed" in step else "wrong" not in step


def test_every_decision_of_the_router_is_recorded_with_the_verifiers_label():
    # The draft always escalates (log-odds 1.3 ≥ 0), the mid always accepts (−1 < 0): two decisions per step.
    gate = PolicyGate(_policy([0.0, 1.0, 0.0]))
    tiers = [ScriptedModel("draft", 10, ["x = wrong", "y = 2", "\\boxed{2}"]),
             ScriptedModel("mid", 40, ["x = 1", "y = 2", "\\boxed{2}"]),
             ScriptedModel("target", 100, ["x = 1", "y = 2", "\\boxed{2}"])]
    decisions = record_decisions(tiers, gate, [Item("p0", "q", "2")], Verifier(), progress=False)
    assert [(d.tier, d.wrong) for d in decisions] == [(0, True), (1, False), (0, False), (1, False)]  # the boxed step: no verdict
    assert all(len(d.features) == N for d in decisions)
    assert not tiers[2].calls  # the target was never asked, so it made no decision


def _separable(n: int = 400) -> list[Decision]:
    """Wrong exactly when the confidence is below 0, on either deciding tier."""
    generator = torch.Generator().manual_seed(0)
    confidence = torch.randn(n, generator=generator).tolist()
    return [Decision([c if i == CONFIDENCE else 0.0 for i in range(N)], k % 2, c < 0) for k, c in enumerate(confidence)]


def _auroc(scores: list[float], wrong: list[bool]) -> float:
    pos, neg = [s for s, w in zip(scores, wrong) if w], [s for s, w in zip(scores, wrong) if not w]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def test_refit_learns_to_escalate_the_wrong_steps_of_each_tier_and_keeps_the_format(tmp_path):
    before = _policy()
    decisions = _separable()
    observations = [dict(zip(CONFIDENCE_SCHEMA.names, d.features)) for d in decisions]
    scores_before = [before.escalation_log_odds(o, d.tier) for o, d in zip(observations, decisions)]
    refined = refit(before, decisions, RefineArgs(epochs=200, lr=0.02))
    for tier in (0, 1):
        held = [d for d in decisions if d.tier == tier]
        scores = [refined.escalation_log_odds(dict(zip(CONFIDENCE_SCHEMA.names, d.features)), tier) for d in held]
        assert _auroc(scores, [d.wrong for d in held]) > 0.95
    assert [before.escalation_log_odds(o, d.tier) for o, d in zip(observations, decisions)] == scores_before  # untouched
    assert refined.guarantee["type"] == "none" and "calibrate" in refined.guarantee["reason"]
    counts = {str(k): {"decisions": 200, "wrong": sum(d.wrong for d in decisions if d.tier == k)} for k in (0, 1)}
    assert refined.training["refined"]["decisions"] == counts
    assert refined.routing == before.routing and refined.kappa == before.kappa
    refined.save(tmp_path)
    loaded = PolicyArtifact.load(tmp_path)
    observation = dict(zip(CONFIDENCE_SCHEMA.names, decisions[0].features))
    assert loaded.score(observation, 0) == pytest.approx(refined.score(observation, 0))


def test_refit_refuses_decisions_with_nothing_to_separate_and_bad_options():
    all_right = [Decision([0.0] * N, 0, False)] * 5
    with pytest.raises(ConfigError, match="both right and wrong"):
        refit(_policy(), all_right)
    with pytest.raises(ConfigError, match="pos_weight > 0"):
        RefineArgs(pos_weight=0.0)


def test_cli_refuses_an_out_of_range_option_before_loading_anything(tmp_path, capsys):
    assert main(["refine", "--policy", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--epochs", "0"]) == 2
    assert "epochs ≥ 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # the shipped models
def test_cli_refines_the_shipped_policy_on_its_own_runs(tmp_path, capsys):
    from stepgraph.defaults import THREE_TIER_POLICY_DIR

    out = tmp_path / "refined"
    assert main(["refine", "--policy", str(THREE_TIER_POLICY_DIR), "--problems", "12", "--epochs", "20", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["problems"] == 12 and set(summary["decisions"]) <= {"0", "1"}
    assert summary["decisions"]["0"]["decisions"] >= 12  # every problem's draft steps were decided on
    assert "calibrate κ next" in captured.err
    refined, shipped = PolicyArtifact.load(out), PolicyArtifact.load(THREE_TIER_POLICY_DIR)
    assert refined.tiers == shipped.tiers and refined.routing == shipped.routing and refined.guarantee["type"] == "none"
    assert not torch.equal(refined.network.net[0].weight, shipped.network.net[0].weight)


@pytest.mark.slow  # the shipped models, as a user's tiers in a run spec
def test_cli_refines_with_a_run_specs_tiers_questions_and_verifier(tmp_path, capsys):
    from test_tier_pipeline import write_spec

    from stepgraph.defaults import THREE_TIER_POLICY_DIR

    spec, out = write_spec(tmp_path), tmp_path / "refined"
    assert main(["refine", "--config", str(spec), "--policy", str(THREE_TIER_POLICY_DIR), "--problems", "50", "--epochs", "5",
                 "--tier-offsets", "0", "1", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == 5  # the spec's train split holds 5 questions
    assert PolicyArtifact.load(out).routing.tier_offsets == [0.0, 1.0]
    assert main(["refine", "--config", str(spec), "--policy", str(THREE_TIER_POLICY_DIR), "--split", "heldout",
                 "--out", str(tmp_path / "none")]) == 2
    assert "Unknown split 'heldout'" in capsys.readouterr().err


def test_refit_fits_a_two_tier_network_without_tier_input():
    torch.manual_seed(0)
    pair = PolicyArtifact(PolicyNetwork(N), 0.0, 0.02, CONFIDENCE_SCHEMA, [0.0] * N, [1.0] * N, ignored=["difficulty"])
    decisions = [dataclasses.replace(d, tier=0) for d in _separable()]
    refined = refit(pair, decisions, RefineArgs(epochs=200, lr=0.02))
    scores = [refined.escalation_log_odds(dict(zip(CONFIDENCE_SCHEMA.names, d.features)), 0) for d in decisions]
    assert _auroc(scores, [d.wrong for d in decisions]) > 0.95
    assert not refined.network.tier_input and refined.training["refined"]["decisions"] == {"0": {"decisions": 400, "wrong": sum(d.wrong for d in decisions)}}
