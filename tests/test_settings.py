"""Run settings are checked when made; operator limits cannot be lifted by a run; the CLI says which option is wrong."""

import math
from dataclasses import fields

import pytest
from scripted import ScriptedModel

from stepgraph.cli import main
from stepgraph.context import RouterContext, RouterLimits
from stepgraph.errors import BadQuestionError, ConfigError
from stepgraph.graph import build_graph
from stepgraph.routing.gates import AlwaysDraftGate

QUESTION = "Ann has 12 coins. She gets 7 more. How many coins does she have?"


def _models():
    return ScriptedModel("small", 1_000, ["12+7=19", "\\boxed{19}"]), ScriptedModel("large", 8_000, ["\\boxed{19}"])


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("max_steps", "many", "integer ≥ 1"), ("max_steps", 0, "integer ≥ 1"), ("max_steps", -1, "integer ≥ 1"),
        ("max_steps", 2.5, "integer ≥ 1"), ("max_steps", True, "integer ≥ 1"),
        ("max_step_tokens", 0, "integer ≥ 1"), ("temperature", math.nan, "finite number ≥ 0"),
        ("temperature", -0.1, "finite number ≥ 0"), ("temperature", math.inf, "finite number ≥ 0"),
        ("budget_flops", math.nan, "finite number > 0"), ("budget_flops", 0, "finite number > 0"),
        ("difficulty", 1.5, "[0, 1]"), ("seed", 1.5, "integer"), ("seed", "0", "integer"), ("gate", 3, "string"),
        ("sticky", "yes", "true or false"),
    ],
)
def test_every_context_field_is_checked_with_its_range_in_the_message(field, value, allowed):
    with pytest.raises(ConfigError, match=rf"RouterContext\.{field} must be .*{allowed[:6]}") as error:
        RouterContext(**{field: value})
    assert isinstance(error.value, ValueError)  # the LangGraph server shows a ValueError's message


def test_good_contexts_still_build():
    RouterContext(max_steps=1, temperature=0, budget_flops=1e12, difficulty=0.0, seed=None, gate="draft")


def test_a_client_cannot_raise_the_question_length_limit():
    assert "max_question_chars" not in {f.name for f in fields(RouterContext)}
    small, large = _models()
    graph = build_graph([small, large], AlwaysDraftGate(), limits=RouterLimits(max_question_chars=100))
    with pytest.raises(BadQuestionError, match=r"limit is 100 \(RouterLimits.max_question_chars\)"):
        graph.invoke({"question": QUESTION + " x" * 50})
    assert small.calls == []


@pytest.mark.parametrize(
    ("context", "limit"),
    [({"max_steps": 9}, "max_steps"), ({"max_step_tokens": 65}, "max_step_tokens"),
     ({"budget_flops": None}, "max_budget_flops"), ({"budget_flops": 2e9}, "max_budget_flops")],
)
def test_a_context_above_the_operators_limits_is_refused_before_any_paid_call(context, limit):
    small, large = _models()
    limits = RouterLimits(max_steps=8, max_step_tokens=64, max_budget_flops=1e9)
    graph = build_graph([small, large], AlwaysDraftGate(), limits=limits)
    with pytest.raises(ConfigError, match=rf"RouterLimits\.{limit}"):
        graph.invoke({"question": QUESTION}, context=RouterContext(**{"max_steps": 8, "budget_flops": 1e6, **context}))
    assert small.calls == []
    assert graph.invoke({"question": QUESTION}, context=RouterContext(max_steps=8, budget_flops=1e6))["answer"] == "19"


def test_limits_themselves_are_checked():
    with pytest.raises(ConfigError, match="RouterLimits.max_steps"):
        RouterLimits(max_steps=0)
    with pytest.raises(ConfigError, match="RouterLimits.max_budget_flops"):
        RouterLimits(max_budget_flops=math.nan)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--temperature", "nan"), ("--max-steps", "0"), ("--budget", "nan"), ("--max-step-tokens", "0"), ("--max-steps", "many")],
)
def test_cli_refuses_bad_run_options_naming_the_option(option, value, capsys, monkeypatch):
    import stepgraph.models.local

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(stepgraph.models.local, "TransformersStepModel", no_loading)
    with pytest.raises(SystemExit) as exit_:
        main(["solve", QUESTION, option, value])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}:" in last and value in last


@pytest.mark.parametrize("flags", [["--gate", "always-escalate"], ["--gate", "never-escalate"], ["--models", "a", "b"], ["--tiers", "3"]])
def test_solve_refuses_options_a_run_spec_would_silently_override(tmp_path, capsys, flags):
    """Issue 26.7: with --config, --gate always-escalate / never-escalate were ignored without a word."""
    spec = tmp_path / "run.toml"
    spec.write_text("not read: the combination is refused first")
    assert main(["solve", "--config", str(spec), *flags, "What is 1+1?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stepgraph: error:") and flags[0] in err and "--config" in err and "[gate]" in err


def test_the_mcp_server_reads_its_limits_from_the_one_limits_type():
    import asyncio

    pytest.importorskip("mcp")
    from stepgraph.integrations.mcp_server import create_server

    graph = build_graph(list(_models()), AlwaysDraftGate())

    def bounds(server):
        tool = asyncio.run(server.list_tools())[0]
        properties = getattr(tool, "input_schema", None) or tool.inputSchema  # mcp 2.x / 1.x
        properties = properties["properties"]
        return properties["max_steps"]["maximum"], properties["question"]["maxLength"]

    assert bounds(create_server(graph, limits=RouterLimits(max_steps=5, max_question_chars=50))) == (5, 50)
    with pytest.warns(DeprecationWarning, match="limits=RouterLimits"):
        assert bounds(create_server(graph, max_steps=3)) == (3, RouterLimits().max_question_chars)
