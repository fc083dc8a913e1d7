"""Policy artifacts: round trip, and clear errors for corrupted or mismatched files."""

import json
import math
from pathlib import Path

import pytest
import torch
from shipped import shipped_parameters

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork, kappa_from_probability
from stepgraph.errors import PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA, FEATURE_SCHEMA, FEATURE_SCHEMA_V2, FeatureSchema
from stepgraph.models.base import StepOutput
from stepgraph.routing.gates import PolicyGate
from stepgraph.routing.gates.base import GateInput
from stepgraph.testbed import testbed_task as shipped_task

STEP = StepOutput("1+1=2", ["1"], [9.0], [[("1", -0.1)]], 10, 0, 1, False, "m")


def _artifact(kappa: float = 0.0) -> PolicyArtifact:
    """π(escalate) falls with logit_confidence; ``kappa`` on the log-odds scale (0: even odds)."""
    n = len(CONFIDENCE_SCHEMA.names)
    net = PolicyNetwork(n)
    with torch.no_grad():  # π(escalate) falls with logit_confidence: logit gap = −4·z
        for p in net.parameters():
            p.zero_()
        net.net[0].weight[0, 0] = 1.0
        net.net[2].weight[0, 0] = 1.0
        net.net[4].weight[1, 0] = -4.0
    return PolicyArtifact(net, kappa, 0.02, CONFIDENCE_SCHEMA, [8.0] + [0.0] * (n - 1), [1.0] * n,
                          ignored=list(CONFIDENCE_SCHEMA.names[1:]))  # it reads logit_confidence only


def _x(confidence: float) -> GateInput:
    obs = {n: None for n in CONFIDENCE_SCHEMA.names} | {"logit_confidence": confidence}
    return GateInput("q", (), STEP, obs)


def test_policy_gate_escalates_iff_probability_reaches_kappa(tmp_path):
    _artifact(kappa=0.0).save(tmp_path)  # π(escalate) ≥ 0.5: log-odds ≥ 0
    gate = PolicyGate.from_path(tmp_path)
    assert gate.threshold == 0.0
    low, high = gate.decide(_x(6.0)), gate.decide(_x(10.0))
    assert low.escalate and low.score > 0.0 and not high.escalate and high.score < 0.0


def test_other_feature_schema_is_refused(tmp_path):
    _artifact().save(tmp_path)
    manifest = json.loads((tmp_path / "policy.json").read_text())
    manifest["feature_schema"]["version"] = 99
    (tmp_path / "policy.json").write_text(json.dumps(manifest))
    with pytest.raises(PolicyFileError, match="feature schema"):
        PolicyGate.from_path(tmp_path)
    other = FeatureSchema("other", 1, ["a"])
    _artifact().save(tmp_path / "b")
    with pytest.raises(PolicyFileError, match="Retrain"):
        PolicyArtifact.load(tmp_path / "b", expected_schema=other)


def test_corrupted_weights_are_refused(tmp_path):
    _artifact().save(tmp_path)
    data = bytearray((tmp_path / "policy.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "policy.safetensors").write_bytes(bytes(data))
    with pytest.raises(PolicyFileError, match="corrupted"):
        PolicyGate.from_path(tmp_path)


@pytest.mark.parametrize("damage", ["missing_weights", "bad_json", "truncated_json", "wrong_format", "unknown_ignored"])
def test_broken_manifests_are_refused(tmp_path, damage):
    _artifact().save(tmp_path)
    manifest = tmp_path / "policy.json"
    if damage == "missing_weights":
        (tmp_path / "policy.safetensors").unlink()
    elif damage == "bad_json":
        manifest.write_text("{not json")
    elif damage == "truncated_json":
        manifest.write_text(manifest.read_text()[:40])
    elif damage == "unknown_ignored":
        data = json.loads(manifest.read_text())
        data["normalization"]["ignored"] = ["max_logit"]
        manifest.write_text(json.dumps(data))
    else:
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format": "pickle"}))
    with pytest.raises(PolicyFileError):
        PolicyArtifact.load(tmp_path)


def test_a_manifest_from_before_ignored_features_derives_them(tmp_path):
    """Older manifests lack "ignored"; their never-recorded features were stored as mean 0, std 1."""
    _artifact().save(tmp_path)
    manifest = tmp_path / "policy.json"
    data = json.loads(manifest.read_text()) | {"format_version": 2, "scale": "log_odds"}  # as format 2 wrote it
    del data["normalization"]["ignored"]
    manifest.write_text(json.dumps(data))
    with pytest.warns(DeprecationWarning, match="old format"):
        assert PolicyArtifact.load(tmp_path).ignored == list(CONFIDENCE_SCHEMA.names[1:])


def test_build_graph_refuses_a_policy_recorded_on_other_tiers():
    """The library path checks an artifact's tiers as the CLI does: other sizes refuse, unless allowed."""
    import warnings

    from scripted import ScriptedModel

    from stepgraph import build_graph
    from stepgraph.testbed.defaults import DEFAULT_POLICY_DIR

    gate = PolicyGate.from_path(DEFAULT_POLICY_DIR)
    draft, target = shipped_parameters("draft"), shipped_parameters("target")
    other = [ScriptedModel("draft", 10, ["1+1=2"]), ScriptedModel("target", 20, ["\\boxed{2}"])]
    with pytest.raises(PolicyFileError, match=rf"calibrated on the tiers draft \({draft:,} params\).*allow_other_tiers"):
        build_graph(other, gate)
    with pytest.warns(RuntimeWarning, match="does not carry its coverage"):
        build_graph(other, gate, allow_other_tiers=True)
    renamed = [ScriptedModel("small", draft, ["1+1=2"]), ScriptedModel("big", target, ["\\boxed{2}"])]
    with pytest.warns(RuntimeWarning, match="this run's tiers are small"):
        build_graph(renamed, gate)  # the same sizes under other names: a warning, not a refusal
    same = [ScriptedModel("draft", draft, ["1+1=2"]), ScriptedModel("target", target, ["\\boxed{2}"])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_graph(same, gate)


def test_the_shipped_graph_checks_its_policy_without_loading_the_models():
    from stepgraph.integrations.studio import LazyStepModel, _local_model
    from stepgraph.testbed import DRAFT_MODEL_DIR

    lazy = _local_model(DRAFT_MODEL_DIR)
    assert isinstance(lazy, LazyStepModel)
    assert lazy.n_params == shipped_parameters("draft") and lazy._model is None  # read from the safetensors header
    assert lazy.model.n_params == lazy.n_params  # the loaded model counts the same


def test_a_gate_loaded_with_other_tiers_allowed_builds_without_a_second_check(tmp_path):
    import warnings

    from scripted import ScriptedModel
    from stepgraph.training.calibration.calibrate import load_gate_artifact

    from stepgraph import build_graph
    from stepgraph.testbed.defaults import DEFAULT_POLICY_DIR

    other = [ScriptedModel("draft", 10, ["1+1=2"]), ScriptedModel("target", 20, ["\\boxed{2}"])]
    with pytest.raises(PolicyFileError):
        load_gate_artifact(DEFAULT_POLICY_DIR, other)
    with pytest.warns(RuntimeWarning, match="does not carry its coverage"):
        gate = load_gate_artifact(DEFAULT_POLICY_DIR, other, allow_other_tiers=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_graph(other, gate)  # allowed once, where it was loaded


def test_cli_solve_refuses_the_policy_over_other_models_unless_allowed(capsys, tmp_path):
    import shutil

    from stepgraph.cli import main
    from stepgraph.testbed import TARGET_MODEL_DIR

    question = shipped_task().generate("test", 1, seed=5)[0].question
    # the target twice: a pair the shipped policy was not trained on
    twice = tmp_path / "target2"
    shutil.copytree(TARGET_MODEL_DIR, twice)
    args = ["solve", question, "--models", str(TARGET_MODEL_DIR), str(twice), "--gate", "policy"]
    assert main(args) != 0
    assert "calibrated on the tiers" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="does not carry its coverage"):
        assert main([*args, "--allow-other-tiers"]) == 0


def test_cli_solve_on_three_shipped_tiers_routes_with_the_shipped_3_tier_policy(capsys):
    import json

    from stepgraph.cli import main
    from stepgraph.testbed.defaults import THREE_TIER_POLICY_DIR

    artifact = PolicyArtifact.load(THREE_TIER_POLICY_DIR)
    assert [t["name"] for t in artifact.tiers] == ["draft", "mid", "target"]
    assert artifact.training["kappa_from"] == "calibration runs"
    assert artifact.guarantee == {"type": "pac", "coverage": 0.98, "confidence": 0.9, "calibration_episodes": 1600}
    question = shipped_task().generate("test", 1, seed=5)[0].question
    assert main(["solve", question, "--tiers", "3", "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["answer"] is not None and all(0 <= s["tier"] <= 2 for s in state["steps"])
    # The gate's scores are the shipped 3-tier policy's log-odds of 1 − π(draft | o, 0), not the 2-tier policy's.
    first = state["steps"][0]
    p = 1 - artifact.probabilities(first["observation"], 0)[0]
    assert first["gate_score"] == pytest.approx(math.log(p / (1 - p)), abs=1e-4)
    assert main(["solve", question, "--tiers", "3", "--models", "a", "b"]) != 0
    assert "either --tiers or --models" in capsys.readouterr().err


# --- format 2: the log-odds scale; format 1 artifacts load and decide as before ---------------------

V1_POLICY = Path(__file__).parent / "data" / "policy_v1"  # the default policy shipped before schema v2
V1_SCORES = [  # (api_confidence, logit_confidence, π(escalate | o) computed by the format-1 code)
    (0.2, 14.0, 1.0), (0.9, 14.0, 2.243058863649061e-11), (0.9, 18.0, 9.438951627683406e-14),
    (0.99, 14.0, 6.753809158119165e-15), (1.0, 18.0, 1.4493521468162025e-15),
]


@pytest.mark.parametrize(("api", "logit", "expected"), V1_SCORES)
def test_a_format_1_artifact_loads_and_decides_as_before(api, logit, expected):
    with pytest.warns(DeprecationWarning, match="stepgraph.policy v1"):
        gate = PolicyGate.from_path(V1_POLICY)
    v1_kappa = 2.5025242837185824e-14  # a probability, read as its log-odds
    assert gate.artifact.training["format_before"]["format_version"] == 1
    assert gate.artifact.schema == CONFIDENCE_SCHEMA and gate.threshold == kappa_from_probability(v1_kappa)
    # a v2 observation (a superset of v1's features) routes on the v1 features only
    obs = {n: 0.0 for n in FEATURE_SCHEMA.names} | {"step_index": 1.0, "step_tokens": 8.0, "difficulty": None,
                                                     "api_confidence": api, "logit_confidence": logit}
    decision = gate.decide(GateInput("q", (), STEP, obs))
    if expected < 1:
        assert decision.score == pytest.approx(math.log(expected / (1 - expected)), rel=1e-5)
    else:  # float32 rounded π to 1; its log-odds go on
        assert decision.score > 16
    assert decision.escalate == (expected >= v1_kappa)


def _log_odds_artifact(kappa: float) -> PolicyArtifact:
    return _artifact(kappa=kappa)


def test_log_odds_kappa_round_trip(tmp_path):
    _log_odds_artifact(-2.5).save(tmp_path)
    manifest = json.loads((tmp_path / "policy.json").read_text())
    assert (manifest["format_version"], manifest["kind"], manifest["kappa"]) == (3, "policy", -2.5)
    gate = PolicyGate.from_path(tmp_path)
    assert gate.threshold == -2.5
    decisions = []
    for confidence in (6.0, 8.5, 9.0, 10.0):  # logit gap −4·tanh(tanh(confidence − 8)): −1.73, −2.57 around κ
        decision = gate.decide(_x(confidence))
        p = gate.artifact.escalate_probability(_x(confidence).observation)
        assert decision.score == pytest.approx(math.log(p / (1 - p)), abs=1e-4)
        assert decision.escalate == (p >= 1 / (1 + math.exp(2.5)))  # the same rule on the probability scale
        decisions.append(decision.escalate)
    assert decisions == [True, True, False, False]


@pytest.mark.parametrize(("change", "message"), [
    ({"scale": "probability", "kappa": 1.5}, "probability κ must be in"),
    ({"format_version": 1, "scale": "log_odds"}, "format_version 1"),
    ({"scale": "percent"}, "scale"),
    ({"kappa": "-inf"}, "kappa"),
])
def test_bad_scales_are_refused(tmp_path, change, message):
    """Format 2 manifests named their κ's scale; the reader of that old format checks it."""
    _log_odds_artifact(-2.5).save(tmp_path)
    manifest = json.loads((tmp_path / "policy.json").read_text()) | {"format_version": 2, "scale": "log_odds"} | change
    (tmp_path / "policy.json").write_text(json.dumps(manifest).replace('"-inf"', "-Infinity"))
    with pytest.raises(PolicyFileError, match=message):
        PolicyArtifact.load(tmp_path)


def test_a_v2_policy_escalates_non_finite_features(tmp_path):
    n = len(FEATURE_SCHEMA.names)
    artifact = PolicyArtifact(PolicyNetwork(n), -1.0, 0.02, FEATURE_SCHEMA, [0.0] * n, [1.0] * n)
    artifact.save(tmp_path)
    gate = PolicyGate.from_path(tmp_path)
    obs = {name: 0.0 for name in FEATURE_SCHEMA.names}
    for bad in (math.nan, math.inf, -math.inf):
        decision = gate.decide(GateInput("q", (), STEP, obs | {"sampled_logprob_sum": bad}))
        assert decision.escalate and "sampled_logprob_sum" in (decision.reason or "")


@pytest.mark.slow  # loads the shipped models
def test_the_shipped_default_policy_loads_and_routes_on_v2_features():
    import warnings

    from stepgraph.graph import build_graph
    from stepgraph.testbed import load_pair
    from stepgraph.testbed.defaults import DEFAULT_POLICY_DIR

    gate = PolicyGate.from_path(DEFAULT_POLICY_DIR)
    assert gate.artifact.schema == FEATURE_SCHEMA_V2  # the pair's policy is on v2; it reads its own features
    assert -50 < gate.threshold < 50  # a log-odds κ, not a probability in the far tail
    question = shipped_task().generate("test", 1, seed=5)[0].question
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the transformers backend reports every feature the policy reads
        result = build_graph(load_pair(), gate).invoke({"question": question})
    assert result["steps"]
    for step in result["steps"]:
        assert step["observation"]["sampled_logprob_sum"] is not None and step["observation"]["ungrounded_operands"] is not None
        assert step["escalated"] == (step["gate_score"] >= gate.threshold)


def test_every_artifact_writer_refuses_a_bad_manifest_or_non_finite_weights_and_writes_nothing(tmp_path):
    """The policy, K-tier policy and allocator share one checked writer (``policy.write_artifact``)."""
    from stepgraph.routing.allocator import ALLOCATOR_SCHEMA
    from stepgraph.routing.learned_allocator import AllocatorArtifact, AllocatorNetwork
    n, tiers = len(CONFIDENCE_SCHEMA.names), [{"name": "d", "parameters": 1}, {"name": "t", "parameters": 2}]
    k = len(ALLOCATOR_SCHEMA.names)
    artifacts = [
        ("a policy", _artifact()),
        ("a policy", PolicyArtifact(PolicyNetwork(n, 8, 2, 2, tier_input=True), 0.0, 0.1, CONFIDENCE_SCHEMA, [0.0] * n,
                                    [1.0] * n, 8, 2, tiers)),  # the K-tier network, K = 2
        ("an allocator", AllocatorArtifact(AllocatorNetwork(k, 2, 8, 2), 0.5, 0.1, tiers, [0.0] * k, [1.0] * k, 8, 2)),
    ]
    for what, artifact in artifacts:
        artifact.alpha = 2.0  # out of (0, 1)
        with pytest.raises(PolicyFileError, match=f"Refusing to write {what} that would not load .*alpha"):
            artifact.save(tmp_path / "bad-manifest")
        artifact.alpha = 0.1
        with torch.no_grad():
            next(artifact.network.parameters()).fill_(math.nan)
        with pytest.raises(PolicyFileError, match=f"Refusing to write {what} into .* are not finite"):
            artifact.save(tmp_path / "nan")
    assert not (tmp_path / "bad-manifest").exists() and not (tmp_path / "nan").exists()
