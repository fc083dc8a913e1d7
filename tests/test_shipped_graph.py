"""The graph and the CLI end to end on the shipped models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stepgraph.cli import main
from stepgraph.context import RouterContext
from stepgraph.errors import BadQuestionError
from stepgraph.graph import build_graph
from stepgraph.routing.gates import AlwaysTargetGate, ConfidenceThresholdGate
from stepgraph.testbed import load_pair
from stepgraph.testbed import testbed_task as shipped_task


@pytest.fixture(scope="module")
def pair():
    return load_pair()


@pytest.mark.slow
def test_routed_run_reports_steps_answer_and_costs(pair):
    problem = shipped_task().generate("test", 1, seed=21)[0]
    result = build_graph(pair, ConfidenceThresholdGate(threshold=1e9)).invoke(
        {"question": problem.question}, context=RouterContext(seed=0)
    )
    steps = result["steps"]
    assert result["stop_reason"] == "final_answer" and result["answer"] == str(problem.answer)
    assert all(s["escalated"] and s["tier"] == 1 for s in steps)  # the threshold is above any confidence
    assert result["costs"]["0"]["calls"] == result["costs"]["1"]["calls"] == len(steps)
    n_draft, n_target = (m.n_params for m in pair)
    assert result["costs"]["0"]["flops"] == pytest.approx(2 * n_draft * result["costs"]["0"]["output_tokens"])
    assert result["costs"]["1"]["flops"] == pytest.approx(2 * n_target * result["costs"]["1"]["output_tokens"])
    assert result["totals"]["flops"] == pytest.approx(result["costs"]["0"]["flops"] + result["costs"]["1"]["flops"])
    assert result["costs"]["0"]["cached_tokens"] > 0  # the prefix cache serves earlier steps
    assert result["totals"]["usd"] > 0


@pytest.mark.slow
def test_target_gate_solves_most_problems(pair):
    graph = build_graph(pair, AlwaysTargetGate())
    problems = shipped_task().generate("test", 10, seed=2)
    answers = [graph.invoke({"question": p.question}, context=RouterContext(seed=i))["answer"] for i, p in enumerate(problems)]
    assert sum(a == str(p.answer) for a, p in zip(answers, problems)) >= 8


@pytest.mark.slow
def test_question_too_long_for_the_models_is_a_clear_error(pair):
    with pytest.raises(BadQuestionError, match="cannot take this question"):
        build_graph(pair, AlwaysTargetGate()).invoke({"question": "Ann has 3 coins. " * 200})


@pytest.mark.slow
def test_cli_solve_json(capsys):
    question = shipped_task().generate("test", 1, seed=4)[0].question
    assert main(["solve", question, "--json", "--gate", "threshold", "--threshold", "0"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["stop_reason"] == "final_answer" and state["escalations"] == 0
    assert set(state["costs"]) == {"0"}


@pytest.mark.slow
def test_cli_solve_text_and_errors(capsys):
    question = shipped_task().generate("test", 1, seed=4)[0].question
    assert main(["solve", question, "--gate", "target"]) == 0
    out = capsys.readouterr().out
    assert "answer:" in out and "tier 1" in out and "FLOPs" in out
    assert main(["solve", "   "]) == 2
    assert "empty" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter per command
def test_cli_help_lists_subcommands_and_each_documents_its_options():
    top = subprocess.run([sys.executable, "-m", "stepgraph", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("solve", "collect", "train", "evaluate", "bench", "overhead", "throughput"):
        assert command in top
    assert "--max-steps" not in top  # a short list; each command documents its own options
    out = subprocess.run([sys.executable, "-m", "stepgraph", "solve", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--models", "--gate", "--policy", "--threshold", "--temperature", "--seed", "--max-steps", "--budget", "--sticky", "--json"):
        assert option in out
    assert "(default: 16)" in out and "word problems" in out and "Out of their domain" in out  # defaults; what the tiers answer
    for command in ("collect", "train", "evaluate", "bench"):
        text = subprocess.run([sys.executable, "-m", "stepgraph", command, "--help"], capture_output=True, text=True, check=True).stdout
        assert "PosixPath" not in text and "/site-packages/" not in text and str(Path(__file__).parents[1]) not in text


@pytest.mark.slow  # a fresh interpreter per command
def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "stepgraph", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("stepgraph ") and out.split()[1][0].isdigit()


@pytest.mark.slow
def test_models_option_does_not_swallow_the_question(capsys):
    from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR

    question = shipped_task().generate("test", 1, seed=4)[0].question
    assert main(["solve", "--gate", "draft", "--models", str(DRAFT_MODEL_DIR), str(TARGET_MODEL_DIR), question]) == 0
    assert "answer:" in capsys.readouterr().out


def test_cli_reports_bad_gate_options_without_a_traceback(capsys):
    assert main(["solve", "Ann has 3 coins. She gets 2 more. She loses 1. How many coins does she have?",
                 "--gate", "random", "--rate", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stepgraph: error:") and "[0, 1]" in err and "Traceback" not in err
