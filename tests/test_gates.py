"""Each gate's decisions on crafted features, and the registry that builds gates by name."""

import json
import math
import random
import warnings

import pytest
import torch

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork, kappa_from_probability
from stepgraph.errors import GateConfigError, PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.models.base import StepOutput
from stepgraph.routing.gates import (
    ALIASES,
    GATES,
    REGISTERED,
    AlwaysDraftGate,
    AlwaysTargetGate,
    ConfidenceThresholdGate,
    ExploringGate,
    FeatureRuleGate,
    PolicyGate,
    RandomGate,
    StepwiseGMMGate,
    make_gate,
)
from stepgraph.routing.gates.base import GateInput
from stepgraph.routing.gates.steer import Mixture, fit_mixture
from stepgraph.testbed.defaults import DEFAULT_CONFIDENCE_THRESHOLD, default_gate_name, resolve_gate

STEP = StepOutput("1+1=2", ["1", "+", "1", "=", "2"], [9.0] * 5, [[("1", -0.1)]] * 5, 10, 0, 5, False, "m")


def x(confidence: float | None = 9.0, step_index: int = 0, api: float | None = None) -> GateInput:
    obs: dict[str, float | None] = {n: None for n in CONFIDENCE_SCHEMA.names}
    obs.update(logit_confidence=confidence, api_confidence=api, step_index=float(step_index))
    return GateInput("q", (), STEP, obs)


# --- always draft / always target ---------------------------------------------------------


def test_always_draft_never_escalates():
    decisions = [AlwaysDraftGate().decide(x(c)) for c in (-100.0, 0.0, 100.0, None)]
    assert [d.escalate for d in decisions] == [False] * 4
    assert all(d.mu_escalate == 0.0 for d in decisions)


def test_always_target_always_escalates():
    decisions = [AlwaysTargetGate().decide(x(c)) for c in (-100.0, 0.0, 100.0, None)]
    assert [d.escalate for d in decisions] == [True] * 4
    assert all(d.mu_escalate == 1.0 for d in decisions)


# --- confidence threshold -----------------------------------------------------------------


@pytest.mark.parametrize(("confidence", "escalate"), [(4.9, True), (5.0, False), (7.0, False), (None, True)])
def test_confidence_threshold_escalates_strictly_below(confidence, escalate):
    decision = ConfidenceThresholdGate(5.0).decide(x(confidence))
    assert decision.escalate is escalate
    assert decision.mu_escalate == float(escalate)


def test_confidence_threshold_treats_nan_confidence_as_low():
    assert ConfidenceThresholdGate(5.0).decide(x(math.nan)).escalate


def test_confidence_threshold_reads_the_chosen_feature():
    gate = ConfidenceThresholdGate(0.9, feature="api_confidence")
    assert gate.decide(x(confidence=-50.0, api=0.95)).escalate is False  # logit_confidence is ignored
    assert gate.decide(x(confidence=50.0, api=0.5)).escalate is True
    assert gate.decide(x(confidence=50.0, api=None)).escalate is True


def test_confidence_threshold_rejects_non_confidence_features():
    with pytest.raises(ValueError, match="logit_confidence"):
        ConfidenceThresholdGate(1.0, feature="step_index")


# --- random -------------------------------------------------------------------------------


def test_random_gate_escalates_at_its_rate():
    gate = RandomGate(0.3, seed=1)
    decisions = [gate.decide(x()) for _ in range(2000)]
    assert abs(sum(d.escalate for d in decisions) / 2000 - 0.3) < 0.035
    assert all(d.mu_escalate == 0.3 for d in decisions)


def test_random_gate_is_reproducible_with_a_seed():
    a, b, c = RandomGate(0.5, seed=7), RandomGate(0.5, seed=7), RandomGate(0.5, seed=8)
    seq_a = [a.decide(x()).escalate for _ in range(200)]
    assert seq_a == [b.decide(x()).escalate for _ in range(200)]
    assert seq_a != [c.decide(x()).escalate for _ in range(200)]


@pytest.mark.parametrize(("rate", "escalate"), [(0.0, False), (1.0, True)])
def test_random_gate_extreme_rates_are_deterministic(rate, escalate):
    gate = RandomGate(rate, seed=0)
    assert {gate.decide(x()).escalate for _ in range(500)} == {escalate}


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan])
def test_random_gate_rejects_rates_outside_0_1(rate):
    with pytest.raises(ValueError, match="rate"):
        RandomGate(rate)


# --- exploring (behaviour policy) ---------------------------------------------------------


@pytest.mark.parametrize(("confidence", "mu"), [(1.0, 0.8), (9.0, 0.2)])
def test_exploring_gate_records_mu_escalate_matching_its_frequency(confidence, mu):
    gate = ExploringGate(ConfidenceThresholdGate(5.0), epsilon=0.4, seed=3)
    decisions = [gate.decide(x(confidence)) for _ in range(4000)]
    assert all(d.mu_escalate == pytest.approx(mu) for d in decisions)  # μ(escalate | o), whatever was drawn
    assert abs(sum(d.escalate for d in decisions) / 4000 - mu) < 0.03


def test_exploring_gate_keeps_the_base_score():
    base = ConfidenceThresholdGate(5.0)
    assert ExploringGate(base, seed=0).decide(x(3.0)).score == base.decide(x(3.0)).score == 2.0


def test_exploring_gate_without_exploration_is_the_base_gate():
    gate = ExploringGate(ConfidenceThresholdGate(5.0), epsilon=0.0, seed=0)
    assert [gate.decide(x(c)).escalate for c in (1.0, 9.0) * 50] == [True, False] * 50


def test_exploring_gate_around_a_stochastic_base_uses_its_probability():
    gate = ExploringGate(RandomGate(0.1, seed=5), epsilon=0.5, seed=6)
    decisions = [gate.decide(x()) for _ in range(4000)]
    mu = 0.5 * 0.1 + 0.25
    assert decisions[0].mu_escalate == pytest.approx(mu)
    assert abs(sum(d.escalate for d in decisions) / 4000 - mu) < 0.03


def test_exploring_gate_rejects_bad_epsilon():
    with pytest.raises(ValueError, match="epsilon"):
        ExploringGate(AlwaysDraftGate(), epsilon=1.2)


# --- STEER stepwise GMM -------------------------------------------------------------------


def _bimodal(rng: random.Random, n: int, low: float = 3.0, high: float = 10.0) -> list[float]:
    return [rng.gauss(low, 0.7) if rng.random() < 0.3 else rng.gauss(high, 0.7) for _ in range(n)]


@pytest.fixture(scope="module")
def steer() -> StepwiseGMMGate:
    rng = random.Random(0)
    return StepwiseGMMGate.fit({0: _bimodal(rng, 400), 1: _bimodal(rng, 400, low=5.0, high=12.0)})


def test_gmm_fit_recovers_the_modes(steer):
    assert steer.mixture_for(0).means == pytest.approx((3.0, 10.0), abs=0.3)
    assert steer.mixture_for(0).weights == pytest.approx((0.3, 0.7), abs=0.06)
    assert [math.sqrt(v) for v in steer.mixture_for(0).variances] == pytest.approx((0.7, 0.7), abs=0.15)
    assert steer.mixture_for(1).means == pytest.approx((5.0, 12.0), abs=0.3)


def test_gmm_fit_is_deterministic():
    scores = _bimodal(random.Random(2), 300)
    assert fit_mixture(scores) == fit_mixture(scores)


def test_steer_escalates_low_confidence_and_accepts_high(steer):
    low, high = steer.decide(x(3.5)), steer.decide(x(9.5))
    assert low.escalate and low.score > 0.99
    assert not high.escalate and high.score < 0.01


def test_steer_buckets_by_step_position(steer):
    # 7.0 is a high score at step 0 (modes 3 / 10) but a low one at step 1 (modes 5 / 12).
    assert not steer.decide(x(7.0, step_index=0)).escalate
    assert steer.decide(x(7.0, step_index=1)).escalate


def test_steer_positions_past_the_last_bucket_use_the_last_bucket(steer):
    assert steer.mixture_for(5) == steer.mixture_for(1) != steer.mixture_for(0)
    assert steer.decide(x(7.0, step_index=5)).escalate


def test_steer_folds_late_positions_into_the_last_bucket():
    rng = random.Random(4)
    gate = StepwiseGMMGate.fit({0: _bimodal(rng, 200), 2: _bimodal(rng, 200, low=5.0, high=12.0)}, max_step_buckets=2)
    assert sorted(gate.mixtures) == [0, 1]
    assert gate.mixture_for(1).means == pytest.approx((5.0, 12.0), abs=0.4)


def test_steer_missing_confidence_escalates(steer):
    decision = steer.decide(x(None))
    assert decision.escalate and decision.score == 1.0


def test_steer_sparse_bucket_falls_back_to_pooled():
    rng = random.Random(1)
    gate = StepwiseGMMGate.fit({0: _bimodal(rng, 400), 3: [1.0, 2.0, 3.0]})
    assert gate.mixture_for(3) == gate.pooled != gate.mixture_for(0)
    assert gate.mixture_for(2) == gate.pooled  # a position with no scores at all


def test_steer_posterior_does_not_turn_around_in_the_tails():
    wide_low = StepwiseGMMGate({0: Mixture((0.5, 0.5), (0.0, 10.0), (25.0, 1.0))}, Mixture((0.5, 0.5), (0.0, 10.0), (1.0, 1.0)))
    assert not wide_low.decide(x(20.0)).escalate  # more confident than the high mode: accept
    wide_high = StepwiseGMMGate({0: Mixture((0.5, 0.5), (0.0, 10.0), (1.0, 25.0))}, wide_low.pooled)
    assert wide_high.decide(x(-20.0)).escalate  # less confident than the low mode: escalate


def test_steer_save_load_round_trip_gives_identical_decisions(steer, tmp_path):
    path = steer.save(tmp_path / "steer.json")
    assert json.loads(path.read_text())["format"] == "stepgraph.steer"  # plain JSON, no pickle
    loaded = StepwiseGMMGate.load(path)
    for step in (0, 1, 4):
        for c in (2.0, 5.0, 6.5, 7.0, 8.0, 11.0, None):
            assert loaded.decide(x(c, step)) == steer.decide(x(c, step))


def test_steer_load_refuses_other_files(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="stepgraph.steer"):
        StepwiseGMMGate.load(tmp_path / "other.json")


def test_steer_fit_needs_scores():
    with pytest.raises(ValueError, match="scores"):
        StepwiseGMMGate.fit({0: [None, math.nan]})  # type: ignore[list-item]


# --- policy gate --------------------------------------------------------------------------


def _save_policy(directory, kappa: float):
    """A one-layer policy with π(escalate | o) = sigmoid(−2·(logit_confidence − 8)); ``kappa`` a probability."""
    n = len(CONFIDENCE_SCHEMA.names)
    net = PolicyNetwork(n, layers=1)
    with torch.no_grad():
        net.net[0].weight.zero_()
        net.net[0].bias.zero_()
        net.net[0].weight[1, 0] = -2.0
    PolicyArtifact(net, kappa_from_probability(kappa), 0.02, CONFIDENCE_SCHEMA, [8.0] + [0.0] * (n - 1), [1.0] * n, layers=1,
                   ignored=list(CONFIDENCE_SCHEMA.names[1:])).save(directory)
    return directory


def test_policy_gate_scores_pi_and_compares_with_kappa(tmp_path):
    gate = PolicyGate.from_path(_save_policy(tmp_path, kappa=0.3))
    assert gate.threshold == pytest.approx(math.log(0.3 / 0.7))  # κ on the log-odds scale
    for confidence, escalate in ((6.0, True), (8.0, True), (8.4, True), (9.0, False), (12.0, False)):
        decision = gate.decide(x(confidence))
        assert decision.score == pytest.approx(-2.0 * (confidence - 8.0), abs=1e-6)  # the log-odds of π
        assert decision.escalate is escalate


def test_policy_gate_threshold_is_the_artifacts_kappa(tmp_path):
    strict = make_gate("policy", path=_save_policy(tmp_path / "strict", kappa=0.7))
    lenient = make_gate("policy", path=_save_policy(tmp_path / "lenient", kappa=0.3))
    assert not strict.decide(x(8.0)).escalate and lenient.decide(x(8.0)).escalate  # π = 0.5 at 8.0


def test_policy_gate_refuses_another_feature_schema(tmp_path):
    _save_policy(tmp_path, kappa=0.5)
    manifest = json.loads((tmp_path / "policy.json").read_text())
    manifest["feature_schema"]["names"] = manifest["feature_schema"]["names"][:-1]
    (tmp_path / "policy.json").write_text(json.dumps(manifest))
    with pytest.raises(PolicyFileError, match="feature schema"):
        PolicyGate.from_path(tmp_path)


def test_policy_gate_refuses_corrupted_weights(tmp_path):
    _save_policy(tmp_path, kappa=0.5)
    weights = tmp_path / "policy.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) - 8, len(data)):
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PolicyFileError, match="corrupted"):
        PolicyGate.from_path(tmp_path)


def test_policy_gate_refuses_a_missing_directory(tmp_path):
    with pytest.raises(PolicyFileError, match="missing"):
        make_gate("policy", path=tmp_path / "nowhere")


# --- hand rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(("arithmetic", "ungrounded", "escalate"), [
    (None, 0.0, False), (0.0, 0.0, False), (1.0, 0.0, True), (0.0, 2.0, True), (None, 1.0, True), (1.0, 1.0, True),
])
def test_rule_escalates_iff_arithmetic_error_or_ungrounded_operands(arithmetic, ungrounded, escalate):
    obs = x().observation | {"arithmetic_error": arithmetic, "ungrounded_operands": ungrounded}
    assert make_gate("rule").decide(GateInput("q", (), STEP, obs)).escalate is escalate


def test_rule_takes_its_features_by_name_and_rejects_unknown_ones():
    obs = x().observation | {"arithmetic_error": 1.0, "ungrounded_operands": 0.0, "escalations": 2.0}
    assert not make_gate("rule", features="ungrounded_operands").decide(GateInput("q", (), STEP, obs)).escalate
    assert FeatureRuleGate(["escalations"]).decide(GateInput("q", (), STEP, obs)).escalate
    for bad in ("arithmetic_eror", "", ["logit_confidence", "nope"]):
        with pytest.raises(GateConfigError, match="features must be one or more of"):
            FeatureRuleGate(bad)


@pytest.mark.parametrize(("arithmetic", "confidence", "escalate"), [
    (0.0, 0.95, False), (0.0, 0.85, True), (1.0, 0.95, True), (0.0, 0.9, False), (0.0, None, True), (0.0, math.nan, True),
])
def test_rule_with_a_confidence_threshold_also_escalates_a_low_or_unknown_confidence(arithmetic, confidence, escalate):
    obs = x().observation | {"arithmetic_error": arithmetic, "ungrounded_operands": 0.0, "api_confidence": confidence}
    gate = make_gate("rule", confidence_threshold=0.9)
    assert gate.decide(GateInput("q", (), STEP, obs)).escalate is escalate
    assert not make_gate("rule").decide(GateInput("q", (), STEP, obs | {"api_confidence": 0.1})).escalate or arithmetic


def test_rule_rejects_a_bad_confidence_threshold_or_feature():
    with pytest.raises(GateConfigError, match="finite"):
        FeatureRuleGate(confidence_threshold=math.inf)
    with pytest.raises(GateConfigError, match="confidence_feature must be one of"):
        FeatureRuleGate(confidence_threshold=0.5, confidence_feature="entropy_max")


# --- registry -----------------------------------------------------------------------------


def test_registry_is_built_from_the_gate_classes():
    assert GATES == {cls.name: cls for cls in REGISTERED}
    assert set(GATES) == {"never-escalate", "always-escalate", "random", "confidence-threshold", "stepwise-gmm", "policy", "rule"}
    assert ALIASES == {"draft": "never-escalate", "target": "always-escalate", "threshold": "confidence-threshold",
                       "steer": "stepwise-gmm"}


@pytest.mark.parametrize(("name", "options", "cls"), [
    ("never-escalate", {}, AlwaysDraftGate),
    ("always-escalate", {}, AlwaysTargetGate),
    ("random", {"rate": 0.2, "seed": 0}, RandomGate),
    ("random", {}, RandomGate),
    ("confidence-threshold", {"threshold": 3.0, "feature": "api_confidence"}, ConfidenceThresholdGate),
    ("draft", {}, AlwaysDraftGate),  # former names keep working
    ("target", {}, AlwaysTargetGate),
    ("threshold", {"threshold": 3.0}, ConfidenceThresholdGate),
])
def test_registry_builds_gates_from_options(name, options, cls):
    assert type(make_gate(name, **options)) is cls


@pytest.mark.parametrize("name", ["steer", "stepwise-gmm"])
def test_registry_loads_steer_with_a_threshold_override(steer, tmp_path, name):
    path = steer.save(tmp_path / "steer.json")
    gate = make_gate(name, path=path, threshold=0.99)
    assert gate.threshold == 0.99 and gate.mixtures == steer.mixtures
    assert make_gate(name, path=path, threshold=None).threshold == steer.threshold


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown gate 'oracle-of-delphi'; choose one of always-escalate, confidence-threshold"):
        make_gate("oracle-of-delphi")


@pytest.mark.parametrize(("name", "options", "message"), [
    ("policy", {}, "needs path="),
    ("stepwise-gmm", {"path": None}, "needs path="),
    ("policy", {"path": "x", "threshold": 0.3}, "takes only"),
    ("never-escalate", {"rate": 0.3}, "takes only"),
    ("random", {"rate": 0.5, "feature": "api_confidence"}, "takes only"),
])
def test_registry_rejects_bad_file_gate_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_gate(name, **options)


def test_testbed_defaults_fill_only_missing_options():
    assert resolve_gate("confidence-threshold").confidence_threshold == DEFAULT_CONFIDENCE_THRESHOLD
    assert resolve_gate("threshold", threshold=None).confidence_threshold == DEFAULT_CONFIDENCE_THRESHOLD
    assert resolve_gate("threshold", threshold=3.0).confidence_threshold == 3.0
    assert isinstance(resolve_gate("policy"), PolicyGate)
    assert type(resolve_gate()) is GATES[default_gate_name()]


def test_the_old_defaults_module_re_exports_the_testbed_defaults():
    import stepgraph
    import stepgraph.defaults as old

    assert old.resolve_gate is resolve_gate and old.DEFAULT_CONFIDENCE_THRESHOLD == DEFAULT_CONFIDENCE_THRESHOLD
    assert stepgraph.resolve_gate is resolve_gate


def test_policy_gate_warns_once_when_a_trained_feature_is_missing():
    import warnings

    from stepgraph.testbed.defaults import DEFAULT_POLICY_DIR

    gate = PolicyGate.from_path(DEFAULT_POLICY_DIR)
    assert "api_confidence" in gate.trained_on and "difficulty" not in gate.trained_on  # difficulty was never given
    full = {n: 1.0 for n in gate.artifact.schema.names} | {"logit_confidence": 16.0, "api_confidence": 0.9, "difficulty": None}
    without_api = full | {"api_confidence": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gate.decide(GateInput("q", (), STEP, full))  # every trained feature present: silent
    with pytest.warns(RuntimeWarning, match="'api_confidence'.*raw_logits.*LOGITS_ONLY_POLICY_DIR"):
        gate.decide(GateInput("q", (), STEP, without_api))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gate.decide(GateInput("q", (), STEP, without_api))  # once per gate, not once per step


def test_the_logits_only_policy_serves_a_backend_without_logprobs_silently():
    import warnings

    from stepgraph.testbed.defaults import LOGITS_ONLY_POLICY_DIR

    gate = PolicyGate.from_path(LOGITS_ONLY_POLICY_DIR)
    assert "logit_confidence" in gate.trained_on and "api_confidence" not in gate.trained_on
    lacking = {"api_confidence", "sampled_logprob_sum", "sampled_logprob_min", "margin_min", "entropy_max", "result_digit_min",
               "previous_sampled_logprob_min", "difficulty"}  # what a raw-logits backend cannot report
    assert not lacking & set(gate.trained_on)
    logits_only = {n: None if n in lacking else 1.0 for n in gate.artifact.schema.names} | {"logit_confidence": 16.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        silent = gate.decide(GateInput("q", (), STEP, logits_only))
    reported = gate.decide(GateInput("q", (), STEP, logits_only | {"api_confidence": 0.05, "sampled_logprob_sum": -9.0}))
    assert (reported.escalate, reported.score) == (silent.escalate, silent.score)  # a reported value changes nothing


# --- judging gates pay through the graph state ---------------------------------------------------


class _ScriptedJudge:
    """A judge scoring every token of a step with log-probability ``logprob``; counts its calls."""

    n_params = 5_000

    def __init__(self, logprob: float) -> None:
        self.logprob, self.calls = logprob, 0

    def step_logprobs(self, question, steps, step):
        self.calls += 1
        return [self.logprob] * len(step)


def test_judge_gate_reports_its_cost_in_the_decision():
    from stepgraph.routing.gates.judges import JudgeGate

    judge = _ScriptedJudge(math.log(0.9))
    decision = JudgeGate(judge, threshold=0.5).decide(GateInput("q", (), STEP, {}, tier=0))
    assert not decision.escalate and judge.calls == 1  # one judging call per decision
    assert decision.cost == {"1": {"calls": 1.0, "flops": 2.0 * 5_000 * len(STEP.text)}}
    assert JudgeGate(judge, judge_tier=3).decide(GateInput("q", (), STEP, {})).cost.keys() == {"3"}


def test_judging_costs_flow_through_the_state_also_under_batch():
    """Regression: the judge's FLOPs were a counter on the gate, read around each run (wrong under graph.batch)."""
    from scripted import ScriptedModel

    from stepgraph.graph import build_graph
    from stepgraph.routing.gates.judges import JudgeGate

    solution = ["1+1=2", "2+2=4", "\\boxed{4}"]
    tiers = [ScriptedModel("small", 1_000, solution), ScriptedModel("large", 8_000, solution)]
    graph = build_graph(tiers, JudgeGate(_ScriptedJudge(0.0), threshold=0.5))  # accepts every step
    questions = [{"question": f"What is {i}?"} for i in range(4)]
    for state in [graph.invoke(questions[0]), *graph.batch(questions)]:
        judged = sum(2.0 * 5_000 * len(s["draft"]) for s in state["steps"])
        generated = sum(a["cost"]["flops"] for s in state["steps"] for a in s["attempts"])
        assert state["escalations"] == 0
        assert state["costs"]["1"]["flops"] == judged and state["costs"]["1"]["calls"] == len(state["steps"])
        assert state["totals"]["flops"] == generated + judged


def test_cli_gate_flags_come_from_the_registry():
    from pathlib import Path

    from stepgraph.cli import GATE_CHOICES, _gate_options, build_parser

    assert set(GATE_CHOICES) == set(GATES) | set(ALIASES)
    parser = build_parser()
    args = parser.parse_args(["solve", "q", "--gate", "steer", "--steer", "g.json", "--threshold", "0.7"])
    assert _gate_options(args) == {"path": Path("g.json"), "threshold": 0.7}
    args = parser.parse_args(["solve", "q", "--gate", "random", "--seed", "3", "--threshold", "0.7"])
    assert _gate_options(args) == {"rate": None, "seed": 3}  # a flag of another gate is not passed on
    args = parser.parse_args(["solve", "q", "--gate", "confidence-threshold", "--feature", "api_confidence"])
    assert resolve_gate(args.gate, **_gate_options(args)).feature == "api_confidence"


def test_the_api_only_policy_serves_a_backend_without_logits_silently():
    import warnings

    from stepgraph.testbed.defaults import API_ONLY_POLICY_DIR

    gate = PolicyGate.from_path(API_ONLY_POLICY_DIR)
    assert "logit_confidence" not in gate.trained_on and "sampled_logprob_sum" in gate.trained_on
    api = {n: 1.0 for n in gate.artifact.schema.names} | {"logit_confidence": None, "difficulty": None, "api_confidence": 0.9,
                                                          "sampled_logprob_sum": -0.5, "sampled_logprob_min": -0.3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        silent = gate.decide(GateInput("q", (), STEP, api))
    reported = gate.decide(GateInput("q", (), STEP, api | {"logit_confidence": 3.0}))
    assert (reported.escalate, reported.score) == (silent.escalate, silent.score)


def test_a_backend_lacking_several_features_gets_one_warning_naming_them_all():
    from stepgraph.testbed.defaults import DEFAULT_POLICY_DIR

    gate = PolicyGate.from_path(DEFAULT_POLICY_DIR)
    full = {n: 1.0 for n in gate.artifact.schema.names} | {"logit_confidence": 16.0, "api_confidence": 0.9, "difficulty": None}
    raw_logits = full | {n: None for n in ("api_confidence", "sampled_logprob_sum", "margin_min")}
    with pytest.warns(RuntimeWarning) as caught:
        gate.decide(GateInput("q", (), STEP, raw_logits))
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert all(f"'{n}'" in str(caught[0].message) for n in ("api_confidence", "sampled_logprob_sum", "margin_min"))


def test_a_step_without_prose_tokens_is_no_missing_backend_feature():
    """A boxed answer alone has no prose token, so its word confidences are None by nature: no warning, as with a
    step without "=" (result_digit_min); a backend without log-probabilities still gets one."""
    from stepgraph.features import FEATURE_SCHEMA, observe
    from stepgraph.models.base import StepOutput

    n = len(FEATURE_SCHEMA.names)
    gate = PolicyGate(PolicyArtifact(PolicyNetwork(n, 8, 2), 0.0, 0.1, FEATURE_SCHEMA, [0.0] * n, [1.0] * n, 8, 2,
                                     ignored=["difficulty"]))
    tokens = ["\\boxed{", "7", "}"]
    boxed = StepOutput("\\boxed{7}", tokens, [12.0] * 3, [[(t, -0.1), ("?", -5.0)] for t in tokens], 10, 0, 3, True, "m",
                       token_logprobs=[-0.1] * 3)
    observation = observe(boxed, step_index=1, escalations=0, question="Ann has 7 pens. How many?", prior_steps=["Ann has 7 pens."],
                          previous={"observation": {"sampled_logprob_min": -0.1}, "escalated": False})
    assert observation["word_sampled_logprob_min"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gate.decide(GateInput("q", ("Ann has 7 pens.",), boxed, observation))
    with pytest.warns(RuntimeWarning, match="sampled_logprob_min"):
        gate.decide(GateInput("q", ("Ann has 7 pens.",), boxed, observation | {"sampled_logprob_min": None}))
