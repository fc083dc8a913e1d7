"""Each gate's decisions on crafted features."""

import random

import pytest

from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.gates import (
    AlwaysDraftGate,
    AlwaysTargetGate,
    ConfidenceThresholdGate,
    ExploringGate,
    RandomGate,
    StepwiseGMMGate,
    make_gate,
)
from stepgraph.gates.base import GateInput
from stepgraph.models.base import StepOutput

STEP = StepOutput("1+1=2", ["1", "+", "1", "=", "2"], [9.0] * 5, [[("1", -0.1)]] * 5, 10, 0, 5, False, "m")


def x(confidence: float | None = 9.0, step_index: int = 0, api: float | None = None) -> GateInput:
    obs = {n: None for n in CONFIDENCE_SCHEMA.names}
    obs.update(logit_confidence=confidence, api_confidence=api, step_index=float(step_index))
    return GateInput("q", (), STEP, obs)


def test_always_gates():
    assert not AlwaysDraftGate().decide(x(-100)).escalate
    assert AlwaysTargetGate().decide(x(100)).escalate


@pytest.mark.parametrize(("confidence", "escalate"), [(4.9, True), (5.0, False), (7.0, False), (None, True)])
def test_confidence_threshold(confidence, escalate):
    assert ConfidenceThresholdGate(5.0).decide(x(confidence)).escalate is escalate


def test_confidence_threshold_on_api_confidence_and_bad_feature():
    gate = ConfidenceThresholdGate(0.9, feature="api_confidence")
    assert gate.decide(x(api=0.5)).escalate and not gate.decide(x(api=0.95)).escalate
    with pytest.raises(ValueError, match="feature"):
        ConfidenceThresholdGate(1.0, feature="step_index")


def test_random_gate_rate_and_seed():
    gate = RandomGate(0.3, seed=1)
    decisions = [gate.decide(x()).escalate for _ in range(4000)]
    assert abs(sum(decisions) / 4000 - 0.3) < 0.03
    again = RandomGate(0.3, seed=1)
    assert [again.decide(x()).escalate for _ in range(4000)] == decisions
    assert gate.decide(x()).probability == 0.3
    with pytest.raises(ValueError, match="rate"):
        RandomGate(1.5)


def test_exploring_gate_records_its_escalation_probability():
    gate = ExploringGate(ConfidenceThresholdGate(5.0), epsilon=0.4, seed=3)
    for confidence, mu in ((1.0, 0.8), (9.0, 0.2)):
        decisions = [gate.decide(x(confidence)) for _ in range(4000)]
        assert all(d.probability == pytest.approx(mu) for d in decisions)
        assert abs(sum(d.escalate for d in decisions) / 4000 - mu) < 0.03


def _bimodal(rng: random.Random, n: int, low: float = 3.0, high: float = 10.0) -> list[float]:
    return [rng.gauss(low, 0.7) if rng.random() < 0.3 else rng.gauss(high, 0.7) for _ in range(n)]


def test_steer_gmm_recovers_modes_and_routes_low_confidence():
    rng = random.Random(0)
    gate = StepwiseGMMGate.fit({0: _bimodal(rng, 400), 1: _bimodal(rng, 400, low=5.0, high=12.0)})
    assert gate.mixture_for(0).means == pytest.approx((3.0, 10.0), abs=0.3)
    assert gate.mixture_for(1).means == pytest.approx((5.0, 12.0), abs=0.3)
    assert gate.decide(x(3.5, step_index=0)).escalate and not gate.decide(x(9.5, step_index=0)).escalate
    # Same score, different step position: 7.0 is high at step 0 but low at step 1.
    assert not gate.decide(x(7.0, step_index=0)).escalate and gate.decide(x(7.0, step_index=1)).escalate
    assert gate.mixture_for(5) == gate.mixture_for(1)  # past the last bucket: the last bucket
    assert gate.decide(x(None)).escalate


def test_steer_sparse_bucket_falls_back_to_pooled(tmp_path):
    rng = random.Random(1)
    gate = StepwiseGMMGate.fit({0: _bimodal(rng, 400), 3: [1.0, 2.0, 3.0]})
    assert gate.mixture_for(3) == gate.pooled
    gate.save(tmp_path / "steer.json")
    loaded = make_gate("steer", path=tmp_path / "steer.json")
    for c in (2.0, 5.0, 6.5, 8.0, 11.0):
        assert loaded.decide(x(c)).score == pytest.approx(gate.decide(x(c)).score)


def test_registry_rejects_unknown_names():
    assert isinstance(make_gate("threshold", threshold=3.0), ConfidenceThresholdGate)
    with pytest.raises(ValueError, match="Unknown gate"):
        make_gate("oracle-of-delphi")
