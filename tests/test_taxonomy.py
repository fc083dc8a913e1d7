"""The v2 error taxonomy (training/bench/taxonomy.py): wrong steps by kind, and what each feature flags."""

from __future__ import annotations

from stepgraph.training.bench import taxonomy

from stepgraph.models.base import StepOutput
from stepgraph.testbed import wordproblems


def scripted(text: str, confidence: float) -> StepOutput:
    return StepOutput(text=text, tokens=[text], max_logits=[confidence], top_logprobs=[[]], prompt_tokens=0, cached_tokens=0,
                      generated_tokens=1, finished=False, model="m", token_logprobs=[-1.0 / confidence])


def test_wrong_steps_are_counted_by_kind_with_the_share_each_feature_flags():
    problems = [p for p in wordproblems.generate("test", 60, seed=1) if len(p.derived) >= 2][:10]
    solutions = [[scripted(s, 5.0 + i) for i, s in enumerate(p.steps)] for p in problems]  # right throughout
    first = problems[0]
    value = first.derived[0].value
    slip = first.steps[0].replace(f"= {value}", f"= {value + 1}")
    solutions[0] = [scripted(slip, 1.0), scripted("I give up.", 1.0)]  # a slip, then a malformed step
    judged = taxonomy.judge_steps(problems, solutions)
    assert [kind for kind, _ in judged[:2]] == ["arithmetic_slip", "malformed"]
    assert judged[1][1]["previous_escalated"] == 0.0 and judged[0][1]["ungrounded_operands"] == 0.0  # observed as the router does

    report = taxonomy.taxonomy(judged)
    rows = report["rows"]
    assert report["wrong_steps"] == 2 and rows["arithmetic_slip"]["share"] == 0.5 and rows["malformed"]["steps"] == 1
    assert rows["arithmetic_slip"]["flagged"]["arithmetic_error"] == 1.0 and rows["malformed"]["flagged"]["arithmetic_error"] == 0.0
    assert rows["all wrong steps"]["flagged"]["low logit_confidence"] == 1.0  # both far below every right step
    assert rows["right steps (false alarms)"]["flagged"]["either (hand rule)"] == 0.0
    assert rows["wrong_operand"]["flagged"]["arithmetic_error"] is None  # no such step
    assert rows["arithmetic_slip"]["flagged"]["unused numbers, final step"] == 0.0  # not a final step
    assert 0 < rows["right steps (false alarms)"]["flagged"]["unused numbers, final step"] < 0.2  # a distractor's number

    table = taxonomy.markdown(report, "stepgraph taxonomy --model m")
    assert table.startswith("`stepgraph taxonomy --model m`")
    assert "| arithmetic slip | 1 | 50.0% | 100% |" in table and "| wrong quantity | 0 | 0.0% |" in table


def test_the_taxonomy_command_refuses_a_directory_without_a_model(tmp_path, capsys):
    from stepgraph.cli import main

    assert main(["taxonomy", "--model", str(tmp_path), "--problems", "2"]) == 2
    assert "no config.json" in capsys.readouterr().err
