"""K-tier policy artifacts and gate: round trip, refusals, 2-tier artifacts still loading, and the graph jumping to the chosen tier."""

from __future__ import annotations

import json

import pytest
import torch
from scripted import ScriptedModel

from stepgraph.artifacts.policy import (
    PolicyArtifact,
    PolicyNetwork,
    kappa_from_probability,
)
from stepgraph.errors import PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA, FeatureSchema
from stepgraph.graph import build_graph
from stepgraph.models.base import StepOutput
from stepgraph.routing.gates import PolicyGate, make_gate
from stepgraph.routing.gates import PolicyGate as TierPolicyGate
from stepgraph.routing.gates.base import GateInput

N = len(CONFIDENCE_SCHEMA.names)
TIERS = [{"name": "draft", "parameters": 10}, {"name": "mid", "parameters": 40}, {"name": "target", "parameters": 100}]
STEP = StepOutput("1+1=2", ["1"], [9.0], [[("1", -0.1)]], 10, 0, 1, False, "m")


def _artifact(bias: list[float], kappa: float = 0.5) -> PolicyArtifact:
    """A policy whose logits are ``bias`` whatever it observes (tiers below the current one masked); ``kappa`` a probability."""
    net = PolicyNetwork(N, 8, 2, 3, tier_input=True)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.net[-1].bias.copy_(torch.tensor(bias))
    return PolicyArtifact(net, kappa_from_probability(kappa), 0.03, CONFIDENCE_SCHEMA, [0.0] * N, [1.0] * N, 8, 2, TIERS,
                          ignored=["difficulty"])


def _observation() -> dict[str, float | None]:
    return {n: 1.0 for n in CONFIDENCE_SCHEMA.names}


def test_round_trip_keeps_the_decisions_and_the_tiers(tmp_path):
    artifact = _artifact([0.3, -1.0, 2.0], kappa=0.4)
    artifact.save(tmp_path)
    loaded = PolicyArtifact.load(tmp_path)
    assert loaded.tiers == TIERS and loaded.kappa == kappa_from_probability(0.4)
    for tier in (0, 1):
        assert loaded.probabilities(_observation(), tier) == pytest.approx(artifact.probabilities(_observation(), tier))
    assert loaded.probabilities(_observation(), 1)[0] == 0.0  # a weaker tier is never chosen


def test_policy_gate_and_the_registry_load_either_format(tmp_path):
    _artifact([0.0, 0.0, 5.0]).save(tmp_path / "k")
    two = PolicyArtifact(PolicyNetwork(N), 0.5, 0.02, CONFIDENCE_SCHEMA, [0.0] * N, [1.0] * N)
    two.save(tmp_path / "two")
    assert isinstance(PolicyGate.from_path(tmp_path / "k"), TierPolicyGate)
    assert isinstance(make_gate("policy", path=tmp_path / "k"), TierPolicyGate)
    two_tier = make_gate("policy", path=tmp_path / "two")
    assert type(two_tier) is PolicyGate
    assert two_tier.decide(GateInput("q", (), STEP, _observation())).tier is None  # escalates to the next tier


def test_gate_names_the_likeliest_stronger_tier():
    gate = TierPolicyGate(_artifact([0.0, 1.0, 3.0], kappa=0.5))
    to_target = gate.decide(GateInput("q", (), STEP, _observation(), tier=0))
    assert to_target.escalate and to_target.tier == 2
    accept = TierPolicyGate(_artifact([4.0, 1.0, 0.0], kappa=0.5)).decide(GateInput("q", (), STEP, _observation(), tier=0))
    assert not accept.escalate and accept.tier is None
    unknown_tier = gate.decide(GateInput("q", (), STEP, _observation(), tier=5))  # a graph with more tiers: the safe side
    assert unknown_tier.escalate and unknown_tier.reason == "non-finite score"


@pytest.mark.parametrize(
    ("bias", "kept", "called"),
    [([0.0, -5.0, 5.0], 2, {"draft", "target"}),  # straight to the target: the mid model is never asked
     ([0.0, 5.0, -5.0], 1, {"draft", "mid"}),  # up one tier, then the mid's step is accepted
     ([5.0, 0.0, 0.0], 0, {"draft"})],
)
def test_the_graph_routes_each_step_to_the_tier_the_policy_picks(bias, kept, called):
    models = [ScriptedModel(t["name"], t["parameters"], ["a = 1", "\\boxed{1}"]) for t in TIERS]
    state = build_graph(models, TierPolicyGate(_artifact(bias))).invoke({"question": "q"})
    assert [s["tier"] for s in state["steps"]] == [kept, kept]
    assert {m.name for m in models if m.calls} == called
    assert [a["tier"] for a in state["steps"][0]["attempts"]] == sorted({0, kept})


def _saved(tmp_path) -> PolicyArtifact:
    artifact = _artifact([0.0, 1.0, 2.0])
    artifact.save(tmp_path)
    return artifact


def _edit_manifest(tmp_path, **changes):
    path = tmp_path / "policy.json"
    manifest = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(manifest))


def test_corrupted_weights_are_refused(tmp_path):
    _saved(tmp_path)
    data = bytearray((tmp_path / "policy.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "policy.safetensors").write_bytes(bytes(data))
    with pytest.raises(PolicyFileError, match="checksum"):
        TierPolicyGate.from_path(tmp_path)


def test_a_manifest_naming_other_tiers_than_the_network_is_refused(tmp_path):
    _saved(tmp_path)
    _edit_manifest(tmp_path, tiers=TIERS[:2], n_tiers=2)
    with pytest.raises(PolicyFileError, match="over 2 tiers"):
        PolicyArtifact.load(tmp_path)
    _edit_manifest(tmp_path, n_tiers=3)
    with pytest.raises(PolicyFileError, match="2 tiers recorded for a network over n_tiers = 3"):
        PolicyArtifact.load(tmp_path)


@pytest.mark.parametrize(("change", "match"), [
    ({"kappa": None}, "kappa"),
    ({"tiers": TIERS[:1]}, "tiers"),
    ({"format_version": 4}, "not a policy manifest this stepgraph reads"),
    ({"feature_schema": FeatureSchema("other", 1, ["x"]).to_dict()}, "feature schema"),
])
def test_broken_manifests_are_refused(tmp_path, change, match):
    _saved(tmp_path)
    _edit_manifest(tmp_path, **change)
    with pytest.raises(PolicyFileError, match=match):
        PolicyArtifact.load(tmp_path)


def test_save_refuses_a_network_over_other_tiers(tmp_path):
    artifact = _artifact([0.0, 0.0, 0.0])
    artifact.tiers = TIERS[:2]
    with pytest.raises(PolicyFileError, match="2 tiers recorded for a network over n_tiers = 3"):
        artifact.save(tmp_path)
    assert not (tmp_path / "policy.json").exists()


def test_routing_sends_escalations_up_one_tier_and_raises_the_bar_per_tier(tmp_path):
    """``routing``: a step goes to the next tier, not the likeliest, and a deciding tier's offset comes off its log-odds."""
    import dataclasses

    from stepgraph.artifacts.policy import Routing

    plain = _artifact([0.0, -5.0, 5.0], kappa=0.5)  # log-odds ≈ 5 from the draft, 10 from the mid tier
    routed = dataclasses.replace(plain, routing=Routing(escalate_to="next", tier_offsets=[0.0, 12.0]))
    draft, mid = GateInput("q", (), STEP, _observation(), tier=0), GateInput("q", (), STEP, _observation(), tier=1)
    assert TierPolicyGate(plain).decide(draft).tier == 2
    assert TierPolicyGate(routed).decide(draft).escalate and TierPolicyGate(routed).decide(draft).tier is None
    assert TierPolicyGate(plain).decide(mid).escalate and not TierPolicyGate(routed).decide(mid).escalate
    assert routed.score(_observation(), 1) == pytest.approx(plain.score(_observation(), 1) - 12.0)
    assert routed.escalate_probability(_observation(), 1) == plain.escalate_probability(_observation(), 1)  # still π
    # In the graph: the draft's step goes to the mid tier, whose step is then kept.
    models = [ScriptedModel(t["name"], t["parameters"], ["a = 1", "\\boxed{1}"]) for t in TIERS]
    state = build_graph(models, TierPolicyGate(routed)).invoke({"question": "q"})
    assert [s["tier"] for s in state["steps"]] == [1, 1] and not models[2].calls
    # It is saved and loaded; a plain artifact's manifest has no routing field, as older readers wrote it.
    routed.save(tmp_path / "routed")
    assert PolicyArtifact.load(tmp_path / "routed").routing == routed.routing
    plain.save(tmp_path / "plain")
    assert "routing" not in json.loads((tmp_path / "plain" / "policy.json").read_text())
    _edit_manifest(tmp_path / "routed", routing={"escalate_to": "next", "tier_offsets": [0.0, 1.0, 2.0]})
    with pytest.raises(PolicyFileError, match="tier_offsets"):
        PolicyArtifact.load(tmp_path / "routed")


def test_with_routing_applies_the_calibrate_options_and_refuses_too_many_offsets():
    from stepgraph.errors import ConfigError

    artifact = _artifact([0.0, 1.0, 2.0])
    assert artifact.with_routing(None, None) is artifact  # nothing given: as recorded
    routed = artifact.with_routing("next", [0.0, 1.5])
    assert (routed.routing.escalate_to, routed.routing.tier_offsets) == ("next", [0.0, 1.5])
    assert artifact.routing.escalate_to == "likeliest"  # a copy
    assert routed.with_routing(None, [0.5]).routing.escalate_to == "next"  # the other setting kept
    with pytest.raises(ConfigError, match=r"tier_offsets \(--tier-offsets\) takes at most one offset per deciding tier"):
        artifact.with_routing(None, [0.0, 1.0, 2.0])
    with pytest.raises(ConfigError, match="routing"):
        artifact.with_routing("sideways", None)


def test_calibrate_refuses_routing_options_without_live_runs(tmp_path, capsys):
    from stepgraph.cli import main

    _artifact([0.0, 1.0, 2.0]).save(tmp_path / "policy")
    assert main(["calibrate", "--policy", str(tmp_path / "policy"), "--tier-offsets", "0", "3", "--out", str(tmp_path / "out")]) != 0
    assert "add --runs N" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
