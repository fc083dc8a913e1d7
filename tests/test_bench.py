"""The benchmark: judge/oracle/PRM gates, bootstrap, threshold search, and a small end-to-end run."""

import csv
import json
import random
from pathlib import Path

import pytest
from scripted import ScriptedModel
from stepgraph.training import bench
from stepgraph.training.collect import testbed_items as make_items
from stepgraph.training.prm import StepRewardModel
from stepgraph.training.records import Episode, StepRecord
from stepgraph.training.verifiers import TestbedVerifier

from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.gates.base import GateInput
from stepgraph.gates.judges import JudgeGate, OracleGate, ProcessRewardGate
from stepgraph.graph import build_graph
from stepgraph.models.base import StepOutput
from stepgraph.testbed import load_pair, task

PROBLEM = task.generate("test", 1, seed=3)[0]


def _x(text: str, prior=(), confidence: float = 9.0) -> GateInput:
    step = StepOutput(text, list(text), [confidence] * len(text), [[(c, -0.1)] for c in text], 10, 0, len(text), False, "d")
    obs = {n: None for n in CONFIDENCE_SCHEMA.names} | {"logit_confidence": confidence, "step_index": float(len(prior))}
    return GateInput(PROBLEM.question, tuple(prior), step, obs)


def test_oracle_escalates_exactly_the_wrong_drafts():
    verifier = TestbedVerifier([PROBLEM])
    gate = OracleGate(lambda q, prior, step: verifier.verify(q, "", prior, step))
    assert not gate.decide(_x(PROBLEM.steps[0])).escalate
    assert gate.decide(_x("1+1=3")).escalate
    wrong = PROBLEM.steps[0].replace("=", "=9")
    small = ScriptedModel("s", 100, [wrong, *PROBLEM.steps[1:]])
    large = ScriptedModel("l", 800, list(PROBLEM.steps))
    result = build_graph([small, large], gate).invoke({"question": PROBLEM.question})
    assert [s["escalated"] for s in result["steps"]] == [True] + [False] * (len(PROBLEM.steps) - 1)


@pytest.mark.slow
def test_specreason_judge_accepts_right_steps_and_rejects_slips():
    gate = JudgeGate(load_pair()[1], threshold=0.5)
    right, slip = PROBLEM.steps[0], PROBLEM.steps[0][:-1] + str((int(PROBLEM.steps[0][-1]) + 1) % 10)
    assert gate.acceptance(_x(right)) > 0.9 and not gate.decide(_x(right)).escalate
    assert gate.acceptance(_x(slip)) < 0.1 and gate.decide(_x(slip)).escalate


def test_reward_model_learns_verdicts_and_drives_the_rsd_gate():
    rng = random.Random(0)
    episodes = []
    for i in range(100):
        conf = rng.uniform(0, 10)
        obs = {n: None for n in CONFIDENCE_SCHEMA.names} | {"logit_confidence": conf, "step_index": 0.0}
        episodes.append(Episode(str(i), "q", "1", [StepRecord(0, obs, 0, 0.5, "d", "e", conf > 5, True, 1.0, 4.0, 1.0)], 1, 1, 4.0))
    prm = StepRewardModel().fit(episodes)
    assert prm(_x("1+1=2", confidence=9.0)) > 0.8
    assert prm(_x("1+1=2", confidence=1.0)) < 0.2
    gate = ProcessRewardGate(prm, threshold=0.5)
    assert gate.decide(_x("1+1=2", confidence=1.0)).escalate and not gate.decide(_x("1+1=2", confidence=9.0)).escalate
    with pytest.raises(ValueError, match="collect"):
        StepRewardModel().fit([])


def test_bootstrap_interval():
    mean, low, high = bench.bootstrap([0.0] * 50 + [1.0] * 50)
    assert mean == 0.5 and 0.35 < low < 0.5 < high < 0.65
    assert bench.bootstrap([2.0] * 10) == (2.0, 2.0, 2.0)


@pytest.mark.slow
def test_small_bench_end_to_end(tmp_path):
    from stepgraph.defaults import DEFAULT_POLICY_DIR

    rng = random.Random(1)
    episodes = []
    for i in range(60):  # enough recorded steps for STEER and the PRM
        steps = []
        for t in range(3):
            conf = rng.gauss(16, 1)
            obs = {n: None for n in CONFIDENCE_SCHEMA.names} | {"logit_confidence": conf, "api_confidence": min(1.0, conf / 18),
                                                                 "step_index": float(t)}
            steps.append(StepRecord(t, obs, 0, 0.5, "d", "e", conf > 15, True, 1.0, 4.0, 1.0))
        episodes.append(Episode(str(i), "q", "1", steps, 1, 1, 12.0))
    calibration, test = make_items("calibration", 4, seed=5), make_items("test", 4, seed=5)
    verifier = TestbedVerifier(task.generate("calibration", 4, seed=5) + task.generate("test", 4, seed=5))
    report = bench.run_bench(load_pair(), train_episodes=episodes, policy_dir=DEFAULT_POLICY_DIR, calibration=calibration,
                             test=test, verify=lambda q, p, s: verifier.verify(q, "", p, s), seeds=(0,), progress=False)
    assert set(report["summary"]) == set(bench.ORDER)
    assert report["summary"]["target"]["covered"]["mean"] == 1.0
    assert report["summary"]["draft"]["escalation_rate"]["mean"] == 0.0
    for picked in report["thresholds"].values():  # the cheapest grid threshold meeting the coverage target
        assert [g["threshold"] for g in picked["grid"]] == bench.GRID
        chosen = next(g for g in picked["grid"] if g["threshold"] == picked["threshold"])
        feasible = [g for g in picked["grid"] if g["coverage"] >= 1 - 0.02]
        if feasible:
            assert chosen in feasible and chosen["flops"] == min(g["flops"] for g in feasible)
    # The oracle never pays for more target steps than target-only.
    assert report["summary"]["oracle"]["flops"]["mean"] <= report["summary"]["target"]["flops"]["mean"]
    files = bench.write_outputs(report, tmp_path)
    assert json.loads(Path(files["json"]).read_text())["problems"] == 4
    assert len(list(csv.reader(Path(files["csv"]).read_text().splitlines()))) == 1 + len(bench.ORDER)
    table = Path(files["table"]).read_text()
    assert all(label in table for label in bench.LABELS.values())
    assert Path(files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_judge_cost_is_counted():
    target = load_pair()[1]
    gate = JudgeGate(target, threshold=0.0)  # never escalates: only the judging is paid
    items = make_items("test", 2, seed=9)
    rows = bench.run_rows(load_pair(), gate, items, seed=0, prices=None)
    assert all(r["judge_flops"] > 0 for r in rows)
    plain = bench.run_rows(load_pair(), ProcessRewardGate(lambda x: 1.0, 0.0), items, seed=0, prices=None)
    for judged, unjudged in zip(rows, plain):
        assert judged["flops"] == pytest.approx(unjudged["flops"] + judged["judge_flops"])
