"""The benchmark: judge/oracle/PRM gates, bootstrap, threshold search, and a small end-to-end run."""

import csv
import json
import random
import re
from pathlib import Path

import pytest
import torch
from scripted import ScriptedModel
from stepgraph.training.bench import bench
from stepgraph.training.collection.collect import testbed_items as make_items
from stepgraph.training.collection.prm import StepRewardModel
from stepgraph.training.collection.verifiers import TestbedVerifier
from stepgraph.training.data.records import Episode, StepRecord

from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.graph import build_graph
from stepgraph.models.base import StepOutput
from stepgraph.routing.gates.base import Gate, GateInput
from stepgraph.routing.gates.judges import JudgeGate, OracleGate, ProcessRewardGate
from stepgraph.testbed import load_pair
from stepgraph.testbed import testbed_task as shipped_task

PROBLEM = shipped_task().generate("test", 1, seed=3)[0]


def _slip(step: str) -> str:
    """The step with its result one off: an arithmetic slip in any task's equation step."""
    return re.sub(r"=\s*(\$?)(\d+)", lambda m: f"= {m[1]}{int(m[2]) + 1}", step, count=1)


def _x(text: str, prior=(), confidence: float = 9.0) -> GateInput:
    step = StepOutput(text, list(text), [confidence] * len(text), [[(c, -0.1)] for c in text], 10, 0, len(text), False, "d")
    obs = {n: None for n in CONFIDENCE_SCHEMA.names} | {"logit_confidence": confidence, "step_index": float(len(prior))}
    return GateInput(PROBLEM.question, tuple(prior), step, obs)


def test_oracle_escalates_exactly_the_wrong_drafts():
    verifier = TestbedVerifier([PROBLEM])
    gate = OracleGate(lambda q, prior, step: verifier.verify(q, "", prior, step))
    assert not gate.decide(_x(PROBLEM.steps[0])).escalate
    assert gate.decide(_x("1+1=3")).escalate
    wrong = _slip(PROBLEM.steps[0])
    small = ScriptedModel("s", 100, [wrong, *PROBLEM.steps[1:]])
    large = ScriptedModel("l", 800, list(PROBLEM.steps))
    result = build_graph([small, large], gate).invoke({"question": PROBLEM.question})
    assert [s["escalated"] for s in result["steps"]] == [True] + [False] * (len(PROBLEM.steps) - 1)


@pytest.mark.slow
def test_specreason_judge_accepts_right_steps_and_rejects_slips():
    gate = JudgeGate(load_pair()[1], threshold=0.5)
    right, slip = PROBLEM.steps[0], _slip(PROBLEM.steps[0])
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
    # The fit is a function of its seed: a model built after other draws from torch's stream fits the same weights.
    first = StepRewardModel()
    torch.rand(100)
    again = StepRewardModel().fit(episodes)
    assert all(torch.equal(a, b) for a, b in zip(first.fit(episodes).net.parameters(), again.net.parameters(), strict=True))


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
    verifier = TestbedVerifier(shipped_task().generate("calibration", 4, seed=5) + shipped_task().generate("test", 4, seed=5))
    report = bench.run_bench(load_pair(), train_episodes=episodes, policy_dir=DEFAULT_POLICY_DIR, calibration=calibration,
                             test=test, verify=lambda q, p, s: verifier.verify(q, "", p, s), seeds=(0,), progress=False)
    assert set(report["summary"]) == set(bench.ORDER)  # every method, each tuned on the grid, exactly and matched
    assert report["summary"]["target"]["covered"]["mean"] == 1.0
    assert report["summary"]["draft"]["escalation_rate"]["mean"] == 0.0
    for picked in report["thresholds"].values():
        if picked["tuning"] == "grid":  # the cheapest grid threshold meeting the coverage target
            if picked["method"] != "threshold-alt":  # a raw-logit threshold's grid is the train deciles
                assert [g["threshold"] for g in picked["grid"]] == bench.GRID
            chosen = next(g for g in picked["grid"] if g["threshold"] == picked["threshold"])
            feasible = [g for g in picked["grid"] if g["coverage"] >= 1 - 0.02]
            if feasible:
                assert chosen in feasible and chosen["flops"] == min(g["flops"] for g in feasible)
        curve = report["tuning"][picked["method"]]["curve"]  # no breakpoint is cheaper and feasible
        feasible = [p for p in curve if p["covered"] >= 1 - 0.02]
        if picked["tuning"] == "exact" and feasible:
            assert picked["calibration"]["flops"] == min(p["flops"] for p in feasible)
    assert set(report["comparisons"]) == set(report["summary"]) - {"policy"}
    # The oracle never pays for more target steps than target-only.
    assert report["summary"]["oracle"]["flops"]["mean"] <= report["summary"]["target"]["flops"]["mean"]
    files = bench.write_outputs(report, tmp_path)
    assert json.loads(Path(files["json"]).read_text())["problems"] == 4
    assert len(list(csv.reader(Path(files["csv"]).read_text().splitlines()))) == 1 + len(bench.ORDER)
    table = Path(files["table"]).read_text()
    assert all(bench.label(name, report) in table for name in bench.ORDER)
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


# --- honest baselines: exact tuning, matched coverage, paired statistics (unit tier) ---------------

def _two_step_problem(t: float) -> tuple[dict, list[float]]:
    """A fake problem whose second step depends on the first decision (escalate iff t > critical).

    Step 1 has critical 0.3; escalating it leads to a step 2 with critical 0.8, accepting it to one
    with critical 0.6. Covered unless step 2 is accepted after an accepted step 1.
    """
    first = t > 0.3
    second_critical = 0.8 if first else 0.6
    second = t > second_critical
    row = {"covered": float(first or second), "flops": 1.0 + first + second, "escalation_rate": (first + second) / 2}
    return row, [0.3, second_critical]


def test_sweep_finds_every_piece_of_a_problem_whose_later_steps_follow_earlier_decisions():
    from stepgraph.training.calibration.tuning import sweep_problem

    calls = []
    pieces = sweep_problem(lambda t: (calls.append(t), _two_step_problem(t))[1], start=0.5, scale=1.0)
    assert [(p.lo, p.hi) for p in pieces] == [(-float("inf"), 0.3), (0.3, 0.8), (0.8, float("inf"))]
    assert len(calls) == 3  # one run per piece
    assert [p.row["flops"] for p in pieces] == [1.0, 2.0, 3.0]
    # 0.6 is a critical value of the accept-first trajectory only, so it is no breakpoint: the sweep never reports it.
    assert 0.6 not in {p.hi for p in pieces}


def test_breakpoints_give_one_threshold_per_interval_and_match_brute_force():
    from stepgraph.training.calibration.tuning import Piece, breakpoint_thresholds, evaluate, sweep_problem

    problems = [sweep_problem(_two_step_problem, start=0.0, scale=1.0),
                [Piece(-float("inf"), 0.5, {"covered": 0.0, "flops": 1.0, "escalation_rate": 0.0}),
                 Piece(0.5, float("inf"), {"covered": 1.0, "flops": 2.0, "escalation_rate": 1.0})]]
    thresholds = breakpoint_thresholds(problems)
    assert thresholds == [0.0, 0.4, 0.65, 1.6]  # below 0.3; (0.3, 0.5); (0.5, 0.8); above 0.8
    curve = evaluate(problems, thresholds)
    for point in curve:  # the summed curve is the mean of the problems' own outcomes at that threshold
        t = point["threshold"]
        expected = [_two_step_problem(t)[0], {"covered": float(t > 0.5), "flops": 1.0 + (t > 0.5)}]
        assert point["covered"] == sum(r["covered"] for r in expected) / 2
        assert point["flops"] == sum(r["flops"] for r in expected) / 2
    grid = evaluate(problems, [0.3, 0.8, 0.81])  # pieces are (lo, hi]: a threshold on a critical value accepts that step
    assert [g["flops"] for g in grid] == [1.0, 2.0, 2.5]


def test_cheapest_picks_the_cheapest_feasible_threshold_else_the_best_coverage():
    from stepgraph.training.calibration.tuning import cheapest

    curve = [{"threshold": 0.1, "covered": 0.90, "flops": 1.0}, {"threshold": 0.5, "covered": 0.98, "flops": 3.0},
             {"threshold": 0.7, "covered": 0.99, "flops": 2.0}, {"threshold": 0.9, "covered": 1.00, "flops": 5.0}]
    assert cheapest(curve, 0.98)["threshold"] == 0.7
    assert cheapest(curve, 0.90)["threshold"] == 0.1
    assert cheapest(curve[:1], 0.98)["threshold"] == 0.1  # none feasible: the highest coverage


def test_critical_values_of_each_gate_kind():
    from stepgraph.training.calibration.tuning import critical_below, critical_feature, critical_of_score

    step = {"gate_score": 0.7 - 0.25, "observation": {"api_confidence": 0.25}, "gate_reason": None}
    assert critical_below(step, 0.7) == pytest.approx(0.25)
    assert critical_of_score(step, 0.7) == pytest.approx(0.45)
    assert critical_feature("api_confidence")(step, 0.7) == 0.25  # read exactly, no rounding
    # A decision that does not depend on the threshold (unknown feature, non-finite score, last tier) has none.
    assert critical_feature("api_confidence")({"observation": {"api_confidence": None}}, 0.7) is None
    assert critical_of_score({"gate_score": float("inf"), "gate_reason": "non-finite score"}, 0.7) is None
    assert critical_of_score({"gate_score": None}, 0.7) is None


def _paired_rows(n: int, cost: float, noise: float, seed: int, miss_every: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"problem_id": f"p{i % (n // 2)}", "seed": i // (n // 2), "flops": cost + rng.gauss(0, noise) + i % 7,
             "covered": 0.0 if miss_every and i % miss_every == 0 else 1.0} for i in range(n)]


def test_paired_bootstrap_interval_excludes_zero_for_a_real_difference_and_covers_it_for_none():
    from stepgraph.training.bench.compare import compare, paired_bootstrap

    policy = _paired_rows(200, 10.0, 1.0, seed=1)
    cheaper = [{**r, "flops": r["flops"] - 0.5 + random.Random(i).gauss(0, 0.5)} for i, r in enumerate(policy)]
    same = [{**r, "flops": r["flops"] + random.Random(i).gauss(0, 0.5)} for i, r in enumerate(policy)]
    c = compare(list(reversed(cheaper)), policy)  # paired by (problem, seed), not by position
    assert c["high"] < 0 and c["low"] < c["diff"] < c["high"] and c["diff"] == pytest.approx(-0.5, abs=0.15)
    assert c["ratio"] < 1
    d = compare(same, policy)
    assert d["low"] < 0 < d["high"]
    assert paired_bootstrap([1.0] * 5, [1.0] * 5) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same problems and seeds"):
        compare(same[:-1], policy)


def test_mcnemar_exact_on_a_known_table():
    from stepgraph.training.bench.compare import compare, mcnemar

    # 1 pair missed by a alone, 9 by b alone: p = 2 · P(X ≤ 1), X ~ Bin(10, 1/2) = 2 · 11/1024 (statsmodels: 0.021484375)
    result = mcnemar([1] + [0] * 9 + [1, 0], [0] + [1] * 9 + [1, 0])
    assert (result["only_a"], result["only_b"]) == (1, 9)
    assert result["p_value"] == pytest.approx(0.021484375)
    assert mcnemar([0, 0], [0, 0])["p_value"] == 1.0  # no discordant pairs: no evidence of a difference
    policy = _paired_rows(40, 10.0, 0.0, seed=2)
    worse = _paired_rows(40, 10.0, 0.0, seed=2, miss_every=4)
    assert compare(worse, policy)["mcnemar"]["only_a"] == 10


def _synthetic_report(with_oracle: bool) -> dict:
    rows = {name: _paired_rows(20, cost, 0.1, seed=3) for name, cost in
            (("target", 80e6), ("policy", 35e6), ("threshold", 80e6), ("threshold-exact", 40e6), ("threshold-matched", 33e6))}
    if with_oracle:
        rows["oracle"] = _paired_rows(20, 20e6, 0.1, seed=3)
    for method_rows in rows.values():
        for r in method_rows:
            r.update(correct=r["covered"], prefill_flops=r["flops"], usd=1e-4, escalation_rate=0.3, seconds=0.01)
    pick = {"covered": 0.98, "flops": 4e7, "escalation_rate": 0.3}
    return {"alpha": 0.02, "seeds": [0, 1], "problems": 10, "calibration_problems": 10,
            "threshold_features": {"threshold": "api_confidence", "threshold-alt": "logit_confidence"},
            "thresholds": {"threshold": {"threshold": 1.0, "tuning": "grid", "method": "threshold", "calibration": pick},
                           "threshold-exact": {"threshold": 0.9744, "tuning": "exact", "method": "threshold", "calibration": pick},
                           "threshold-matched": {"threshold": 0.8761, "tuning": "matched", "method": "threshold", "calibration": pick}},
            "tuning": {"policy_calibration_coverage": 0.97, "threshold": {"probes": 55, "problems": 10, "breakpoints": 40}},
            "summary": {n: bench.summarize(r) for n, r in rows.items()},
            "comparisons": {n: bench.compare(r, rows["policy"]) for n, r in rows.items() if n != "policy"},
            "notes": [] if with_oracle else ["Oracle row omitted: run.toml has no exact step verifier."], "rows": rows}


def test_table_shows_every_tuning_with_its_paired_comparison_and_the_no_oracle_note(tmp_path):
    table = bench.markdown_table(_synthetic_report(with_oracle=False))
    lines = table.splitlines()
    assert "Δ MFLOPs vs policy [95% CI]" in lines[0] and "McNemar p" in lines[0] and "FLOPs / target" in lines[0]
    exact = next(line for line in lines if line.startswith("| Confidence threshold (api_confidence), exact breakpoints"))
    assert "| 0.9744 |" in exact and "+5.0 [" in exact
    matched = next(line for line in lines if "matched to the policy's coverage" in line)
    assert "-2.0 [" in matched
    assert "Oracle row omitted: run.toml has no exact step verifier." in table
    assert not any(line.startswith("| Oracle") for line in lines)
    assert "| Confidence threshold (api_confidence) | 1.0: 0.980 / 40.0 | 0.9744: 0.980 / 40.0 | 0.8761: 0.980 / 40.0 | 55 | 40 |" in table
    with_oracle = bench.markdown_table(_synthetic_report(with_oracle=True))
    assert "| Oracle |" in with_oracle and "omitted" not in with_oracle
    report = _synthetic_report(with_oracle=False)
    report["summary"] = {n: s for n, s in report["summary"].items()}
    bench.write_outputs(report, tmp_path)
    header, *body = list(csv.reader((tmp_path / "results.csv").read_text().splitlines()))
    assert {"tuning", "threshold", "flops_diff_vs_policy", "mcnemar_p"} <= set(header)
    exact_row = dict(zip(header, next(r for r in body if r[0] == "threshold-exact"), strict=True))
    assert exact_row["tuning"] == "exact" and float(exact_row["flops_diff_low"]) > 0


@pytest.mark.slow
def test_exact_sweep_agrees_with_running_the_gate_at_each_threshold():
    """The sweep's claim: one run per piece gives the outcome at every threshold (seeds fixed per problem and step)."""
    from stepgraph.training.calibration.tuning import Tunable, breakpoint_thresholds, critical_feature, evaluate, sweep
    from stepgraph.training.collection.runs import add_coverage, run_gate

    from stepgraph.routing.gates import AlwaysTargetGate, ConfidenceThresholdGate

    tiers, items = load_pair(), make_items("calibration", 5, seed=11)
    target = run_gate(tiers, AlwaysTargetGate(), items, seed=0, progress=False)
    tunable = Tunable(lambda t: ConfidenceThresholdGate(t, feature="api_confidence"), critical_feature("api_confidence"),
                      start=0.5, grid=bench.GRID)
    pieces = sweep(tiers, tunable, items, target, seed=0)
    thresholds = breakpoint_thresholds(pieces)
    assert len(thresholds) > 3
    for point in evaluate(pieces, thresholds[:: max(1, len(thresholds) // 6)]):
        rows = add_coverage(run_gate(tiers, tunable.make(point["threshold"]), items, seed=0, progress=False), target)
        assert point["flops"] == pytest.approx(sum(r["flops"] for r in rows) / len(rows))
        assert point["covered"] == pytest.approx(sum(r["covered"] for r in rows) / len(rows))


def _scripted_bench(policy: Gate, frontier: tuple[float, ...] = ()) -> dict:
    """The whole bench on scripted tiers (no weights): the draft slips ("1+1=3", low confidence) on the first step of odd
    problems only; no verifier, so no oracle."""
    from stepgraph.training.collection.collect import Item

    class Draft(ScriptedModel):
        def generate_step(self, question, steps, **kw):
            first = "1+1=3" if question.endswith("odd") else "1+1=2"
            self.script = [first, "\\boxed{" + (steps[0][-1] if steps else "?") + "}"]  # the answer follows the prefix
            self.confidence = [4.0, 12.0] if question.endswith("odd") else [9.0, 12.0]
            return super().generate_step(question, steps, **kw)

    tiers = [Draft("d", 100, ["x"]), ScriptedModel("t", 800, ["1+1=2", "\\boxed{2}"])]
    items = [Item(str(i), f"what is 1+1, {'odd' if i % 2 else 'even'}", "2") for i in range(6)]
    rng = random.Random(0)
    episodes = []
    for i in range(40):
        conf = rng.uniform(2, 14)
        obs = {n: None for n in CONFIDENCE_SCHEMA.names} | {"logit_confidence": conf, "api_confidence": 0.9, "step_index": 0.0}
        episodes.append(Episode(str(i), "q", "2", [StepRecord(0, obs, 0, 0.5, "d", "e", conf > 7, True, 1.0, 4.0, 1.0)], 1, 1, 4.0))
    return bench.run_bench(tiers, train_episodes=episodes, policy=policy, calibration=items, test=items, verify=None,
                           seeds=(0,), progress=False, no_oracle_reason="run.toml has no exact step verifier", frontier=frontier)


def test_bench_with_scripted_tiers_and_no_verifier_notes_the_missing_oracle():
    """The whole bench on scripted tiers (no weights): every tuning row, the comparisons, and the notes."""
    from stepgraph.routing.gates import ConfidenceThresholdGate

    report = _scripted_bench(ConfidenceThresholdGate(7.0, feature="logit_confidence"))
    assert "oracle" not in report["summary"]
    assert "Oracle row omitted: run.toml has no exact step verifier." in report["notes"]
    assert any("κ is not re-tuned" in note for note in report["notes"])  # a threshold gate as the policy
    assert report["tuning"]["policy_calibration_coverage"] == 1.0
    # The logit threshold's exact tuning finds the cut between 4 and 9 (escalate the slips only); the grid cannot.
    exact = report["thresholds"]["threshold-alt-exact"]
    assert 4.0 < exact["threshold"] <= 9.0 and exact["calibration"]["covered"] == 1.0
    assert report["summary"]["threshold-alt-exact"]["flops"]["mean"] < report["summary"]["target"]["flops"]["mean"]
    assert report["comparisons"]["threshold-alt-exact"]["diff"] == pytest.approx(0.0)  # the same decisions as the policy
    assert "Oracle row omitted" in bench.markdown_table(report)


def test_sweep_on_threads_finds_the_same_pieces_as_one_thread():
    from stepgraph.training.calibration.tuning import Tunable, critical_feature, sweep
    from stepgraph.training.collection.collect import Item

    from stepgraph.routing.gates import ConfidenceThresholdGate

    tiers = [ScriptedModel("d", 100, ["1+1=3", "\\boxed{3}"], confidence=[4.0, 12.0]),
             ScriptedModel("t", 800, ["1+1=2", "\\boxed{2}"])]
    items = [Item(str(i), f"what is 1+1 ({i})", "2") for i in range(6)]
    targets = [{"correct": 1.0}] * len(items)
    tunable = Tunable(lambda t: ConfidenceThresholdGate(t, feature="logit_confidence"), critical_feature("logit_confidence"),
                      start=8.0, grid=bench.GRID)
    one = sweep(tiers, tunable, items, targets, seed=0)
    many = sweep(tiers, tunable, items, targets, seed=0, concurrency=3)
    assert [[(p.lo, p.hi, p.row["covered"], p.row["flops"]) for p in ps] for ps in many] == \
           [[(p.lo, p.hi, p.row["covered"], p.row["flops"]) for p in ps] for ps in one]
    assert [(p.lo, p.hi) for p in one[0]] == [(-float("inf"), 4.0), (4.0, 12.0), (12.0, float("inf"))]
    # Both drafted steps are wrong (the scripted draft always boxes 3): only escalating both covers the problem.
    assert [p.row["covered"] for p in one[0]] == [0.0, 0.0, 1.0]


class _TierScoreGate(Gate):
    """Escalates iff a scripted score of (tier, step position) reaches the threshold; to the next tier."""

    name = "tier-score"

    def __init__(self, threshold: float, scores: dict[tuple[int, int], float]) -> None:
        self.threshold, self.scores = threshold, scores

    def score(self, x: GateInput) -> float:
        return self.scores[(x.tier, len(x.steps))]


def test_sweep_of_a_k_tier_gate_sees_every_decision_and_matches_running_each_threshold():
    """A step sent to the mid tier is decided twice; the mid tier's decision is a breakpoint too (``critical=None``)."""
    from stepgraph.training.calibration.tuning import Tunable, evaluate, sweep
    from stepgraph.training.collection.collect import Item
    from stepgraph.training.collection.runs import add_coverage, run_gate

    tiers = [ScriptedModel("d", 100, ["1+1=3", "\\boxed{3}"]), ScriptedModel("m", 300, ["1+1=2", "\\boxed{2}"]),
             ScriptedModel("t", 900, ["1+1=2", "\\boxed{2}"])]
    scores = {(0, 0): 0.6, (1, 0): 0.4, (0, 1): 0.7, (1, 1): 0.2}
    items = [Item("a", "what is 1+1", "2")]
    target = [{"correct": 1.0}]
    tunable = Tunable(lambda t: _TierScoreGate(t, scores), None, start=0.9, grid=bench.GRID)
    pieces = sweep(tiers, tunable, items, target, seed=0)
    assert sorted(p.hi for p in pieces[0] if p.hi != float("inf")) == [0.2, 0.4, 0.6, 0.7]
    for t in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8]:
        expected = add_coverage(run_gate(tiers, tunable.make(t), items, seed=0, progress=False), target)[0]
        point = evaluate(pieces, [t])[0]
        assert (point["flops"], point["covered"]) == pytest.approx((expected["flops"], expected["covered"])), t


def test_calibration_on_runs_scans_from_the_safe_side_and_stops_at_the_first_failure():
    from stepgraph.training.calibration.tuning import Piece, calibrate_on_runs

    def problem(c: float) -> list[Piece]:
        # Covered iff t <= c (enough escalation), and again past 1.0: a lucky region a scan from the top would pick.
        return [Piece(-float("inf"), c, {"covered": 1.0, "flops": 5.0, "escalation_rate": 1.0}),
                Piece(c, 1.0, {"covered": 0.0, "flops": 2.0, "escalation_rate": 0.5}),
                Piece(1.0, float("inf"), {"covered": 1.0, "flops": 1.0, "escalation_rate": 0.0})]

    problems = [problem(0.1 * i) for i in range(1, 11)]
    picked = calibrate_on_runs(problems, alpha=0.2)  # ⌊0.2 · 11⌋ − 1 = 1 miss allowed
    assert 0.1 < picked["threshold"] <= 0.2 and picked["calibration"]["misses"] == 1
    assert picked["guarantee"]["type"] == "split-conformal"
    never = calibrate_on_runs([[Piece(-float("inf"), float("inf"), {"covered": 0.0, "flops": 1.0, "escalation_rate": 1.0})]] * 10, 0.2)
    assert never["guarantee"]["type"] == "none" and never["calibration"]["misses"] == 10


def test_hand_rule_row_and_the_policy_matched_to_its_coverage():
    """The two-feature hand rule is its own row; the policy's κ re-tuned to the rule's calibration coverage is compared with it, paired."""

    class Overcautious(Gate):  # a score-vs-threshold policy that escalates every step until its κ is re-tuned
        threshold = -13.0

        def score(self, x: GateInput) -> float:
            return -x.observation["logit_confidence"]

    report = _scripted_bench(Overcautious())
    # The rule escalates exactly the slips ("1+1=3": arithmetic_error), so it covers everything at the oracle's cost.
    assert report["tuning"]["rule_calibration_coverage"] == 1.0
    assert report["summary"]["rule"]["covered"]["mean"] == 1.0
    assert report["summary"]["rule"]["escalation_rate"]["mean"] == pytest.approx(0.25)  # 3 of 12 steps
    assert report["comparisons"]["rule"]["diff"] < 0  # cheaper than the over-cautious policy
    matched = report["thresholds"]["policy-matched"]
    assert -9.0 < matched["threshold"] <= -4.0 and matched["calibration"]["covered"] == 1.0
    versus = report["comparisons"]["policy-matched"]["versus_rule"]
    assert versus["diff"] == pytest.approx(0.0) and versus["low"] == pytest.approx(0.0)  # the same decisions as the rule
    table = bench.markdown_table(report)
    assert "| Hand rule (arithmetic_error or ungrounded_operands) |" in table
    assert "| CPO policy κ, matched to the hand rule's coverage |" in table
    assert "The policy against the hand rule at the rule's calibration coverage (1.000): Δ MFLOPs (policy κ matched − rule) +0.0" in table
    # The rule with a confidence threshold, tuned exactly: the rule already covers everything, so the cheapest threshold
    # escalates nothing more than the rule does.
    exact = report["thresholds"]["rule-threshold-exact"]
    assert exact["calibration"]["covered"] == 1.0
    assert report["summary"]["rule-threshold-exact"]["flops"]["mean"] == report["summary"]["rule"]["flops"]["mean"]
    assert "| Hand rule or confidence threshold (api_confidence), exact breakpoints |" in table


def test_frontier_on_test_runs_finds_the_policys_cheapest_kappa_at_the_rules_coverage():
    """Swept on the test runs, the over-cautious policy's frontier reaches the rule's coverage at the rule's cost, though
    the policy as given escalates every step."""

    class Overcautious(Gate):
        threshold = -13.0

        def score(self, x: GateInput) -> float:
            return -x.observation["logit_confidence"]

    report = _scripted_bench(Overcautious(), frontier=(0.5, 1.0))
    frontier = report["frontier"]
    assert set(frontier["levels"]) == {"0.5", "1"}
    rule_flops = report["summary"]["rule"]["flops"]["mean"]
    assert report["summary"]["policy"]["flops"]["mean"] > rule_flops  # as given: every step escalated
    at_rule = frontier["at_rule_coverage"]
    assert at_rule["coverage"] == 1.0 and at_rule["policy"]["covered"] == 1.0
    assert at_rule["policy"]["flops"] == pytest.approx(rule_flops)
    assert at_rule["policy_minus_rule"]["flops"]["mean"] == pytest.approx(0.0)
    half = frontier["levels"]["0.5"]["points"]
    assert half["policy"]["covered"] >= 0.5 and half["policy"]["flops"] < rule_flops  # the slips may go through at 0.5
    assert frontier["levels"]["1"]["minus_policy"]["rule-threshold"]["flops"]["mean"] == pytest.approx(0.0)
    table = bench.markdown_table(report)
    assert "| coverage ≥ | CPO policy κ | Hand rule or confidence threshold | Δ MFLOPs vs policy |" in table
    assert "At the hand rule's own test coverage (1.000)" in table


def test_rule_or_threshold_critical_value_is_the_confidence_unless_the_rule_fired():
    from stepgraph.training.calibration.tuning import critical_unless_rule

    from stepgraph.routing.gates import FeatureRuleGate

    critical = critical_unless_rule(FeatureRuleGate(("arithmetic_error", "ungrounded_operands"), confidence_feature="api_confidence"))
    step = {"observation": {"arithmetic_error": 0.0, "ungrounded_operands": None, "api_confidence": 0.7}}
    assert critical(step, 0.5) == 0.7
    assert critical({"observation": step["observation"] | {"ungrounded_operands": 1.0}}, 0.5) is None  # escalates at every t
    assert critical({"observation": step["observation"] | {"api_confidence": None}}, 0.5) is None
    assert critical(step | {"gate_reason": "non-finite features: x"}, 0.5) is None
