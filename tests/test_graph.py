"""The routing graph: each node on its own, then whole runs on scripted models."""

import pytest
from langgraph.runtime import Runtime
from scripted import ScriptedModel

from stepgraph.context import RouterContext
from stepgraph.errors import BadQuestionError
from stepgraph.graph import build_graph
from stepgraph.graph.nodes import RoutingNodes
from stepgraph.routing.gates import AlwaysDraftGate as NeverGate
from stepgraph.routing.gates import AlwaysTargetGate as AlwaysGate
from stepgraph.routing.gates.base import Gate, GateInput

QUESTION = "Ann has 12 coins. She gets 7 more. She gives away 5. How many coins does she have?"
SOLUTION = ["12+7=19", "19-5=14", "\\boxed{14}"]


class BelowGate(Gate):
    """Escalate when the STEER confidence is below 5."""

    name = "below"
    threshold = 0.0

    def score(self, x: GateInput) -> float:
        return 5.0 - (x.observation["logit_confidence"] or 0.0)


def _pair(draft_conf=10.0, draft_script=SOLUTION):
    return ScriptedModel("small", 1_000, draft_script, draft_conf), ScriptedModel("large", 8_000, SOLUTION, 20.0)


def _runtime(**kw) -> Runtime:
    return Runtime(context=RouterContext(**kw))


# --- nodes on their own ------------------------------------------------------------------------


def test_draft_node_uses_base_tier_and_charges_it():
    small, large = _pair()
    nodes = RoutingNodes([small, large], {"never": NeverGate()})
    update = nodes.draft({"question": QUESTION, "steps": [], "costs": {}}, _runtime())
    assert update["candidate"]["text"] == "12+7=19" and update["candidate_tier"] == 0
    assert update["costs"]["0"]["flops"] == 2 * 1_000 * (len("12+7=19") + 1)
    assert small.calls == [(QUESTION, ())] and large.calls == []
    update = nodes.draft({"question": QUESTION, "steps": [], "costs": {}, "base_tier": 1}, _runtime())
    assert update["candidate_tier"] == 1 and len(large.calls) == 1


def test_features_node_computes_the_schema():
    small, large = _pair(draft_conf=3.5)
    nodes = RoutingNodes([small, large], {"never": NeverGate()})
    candidate = small.generate_step(QUESTION, []).to_dict()
    update = nodes.features({"question": QUESTION, "steps": [], "candidate": candidate, "escalations": 2}, _runtime(difficulty=0.3))
    obs = update["observation"]
    assert obs["logit_confidence"] == pytest.approx(3.5)
    assert obs["step_index"] == 0 and obs["escalations"] == 2 and obs["difficulty"] == 0.3
    assert obs["is_final"] == 0.0 and obs["step_tokens"] == len("12+7=19") + 1
    assert update["first_observation"] == obs


def test_gate_node_asks_the_gate_except_on_the_top_tier():
    small, large = _pair()
    nodes = RoutingNodes([small, large], {"below": BelowGate()})
    candidate = small.generate_step(QUESTION, []).to_dict()
    base = {"question": QUESTION, "steps": [], "candidate": candidate}
    low = nodes.gate({**base, "candidate_tier": 0, "observation": {"logit_confidence": 1.0}}, _runtime())
    high = nodes.gate({**base, "candidate_tier": 0, "observation": {"logit_confidence": 9.0}}, _runtime())
    top = nodes.gate({**base, "candidate_tier": 1, "observation": {"logit_confidence": 1.0}}, _runtime())
    assert low["decision"]["escalate"] and low["decision"]["score"] == 4.0
    assert not high["decision"]["escalate"]
    assert top["decision"] == {"escalate": False, "score": None, "mu_escalate": None}


def test_escalate_node_moves_up_one_tier_and_sticky_keeps_it():
    small, large = _pair()
    nodes = RoutingNodes([small, large], {"never": NeverGate()})
    state = {"question": QUESTION, "steps": [], "candidate_tier": 0, "attempts": [{"tier": 0}], "escalations": 0}
    update = nodes.escalate(state, _runtime())
    assert update["candidate_tier"] == 1 and update["escalations"] == 1 and "base_tier" not in update
    assert update["costs"] == {"1": update["attempts"][-1]["cost"]} and len(update["attempts"]) == 2
    assert nodes.escalate(state, _runtime(sticky=True))["base_tier"] == 1


@pytest.mark.parametrize(
    ("text", "n_prior", "context", "reason"),
    [
        ("\\boxed{14}", 0, {}, "final_answer"),
        ("19-5=14", 2, {"max_steps": 3}, "max_steps"),
        ("19-5=14", 0, {"budget_flops": 10.0}, "budget"),
        ("19-5=14", 0, {}, None),
    ],
)
def test_append_node_stop_rules(text, n_prior, context, reason):
    small, large = _pair()
    nodes = RoutingNodes([small, large], {"never": NeverGate()})
    candidate = ScriptedModel("small", 1_000, [text]).generate_step(QUESTION, []).to_dict()
    prior = [{"text": "x"}] * n_prior
    state = {"question": QUESTION, "steps": prior, "candidate": candidate, "candidate_tier": 0,
             "attempts": [{"text": text}], "costs": {"0": {"flops": 100.0}}}
    update = nodes.append(state, _runtime(**context))
    assert update["stop_reason"] == reason
    assert update["steps"][0]["index"] == n_prior and update["steps"][0]["flops_so_far"] == 100.0
    assert update["answer"] == ("14" if reason == "final_answer" else None)


# --- whole runs --------------------------------------------------------------------------------


def test_accepting_gate_keeps_every_draft():
    small, large = _pair()
    result = build_graph([small, large], NeverGate()).invoke({"question": QUESTION})
    assert [s["text"] for s in result["steps"]] == SOLUTION
    assert all(s["tier"] == 0 and not s["escalated"] for s in result["steps"])
    assert result["answer"] == "14" and result["stop_reason"] == "final_answer"
    assert large.calls == [] and set(result["costs"]) == {"0"}


def test_escalated_drafts_are_still_paid_for():
    small, large = _pair(draft_conf=1.0, draft_script=["12+7=18", "bad", "\\boxed{0}"])
    result = build_graph([small, large], AlwaysGate()).invoke({"question": QUESTION})
    assert [s["text"] for s in result["steps"]] == SOLUTION
    assert [s["draft"] for s in result["steps"]] == ["12+7=18", "bad", "\\boxed{0}"]
    assert result["costs"]["0"]["calls"] == 3 and result["costs"]["1"]["calls"] == 3
    assert result["totals"]["flops"] == pytest.approx(result["costs"]["0"]["flops"] + result["costs"]["1"]["flops"])
    assert result["escalations"] == 3


def test_gate_routes_only_low_confidence_steps():
    small, large = _pair(draft_conf=[9.0, 1.0, 9.0])
    result = build_graph([small, large], BelowGate()).invoke({"question": QUESTION})
    assert [s["tier"] for s in result["steps"]] == [0, 1, 0]
    assert len(large.calls) == 1 and large.calls[0][1] == ("12+7=19",)


def test_sticky_escalation_keeps_later_steps_on_the_target():
    small, large = _pair(draft_conf=[1.0, 9.0, 9.0])
    result = build_graph([small, large], BelowGate()).invoke({"question": QUESTION}, context=RouterContext(sticky=True))
    assert [s["tier"] for s in result["steps"]] == [1, 1, 1]
    assert len(small.calls) == 1


def test_a_run_of_escalations_stops_paying_for_drafts():
    """stick_after=2: after two escalated steps in a row the target writes the rest without drafts."""
    five = ["1+1=2", "2+1=3", "3+1=4", "4+1=5", "\\boxed{5}"]
    small = ScriptedModel("small", 1_000, five, [1.0, 9.0, 1.0, 1.0, 1.0])
    large = ScriptedModel("large", 8_000, five, 20.0)
    result = build_graph([small, large], BelowGate()).invoke({"question": QUESTION}, context=RouterContext(stick_after=2))
    # step 0 escalated, step 1 accepted (the run resets), steps 2 and 3 escalated: step 4 is the target's alone
    assert [s["tier"] for s in result["steps"]] == [1, 0, 1, 1, 1]
    assert [len(s["attempts"]) for s in result["steps"]] == [2, 1, 2, 2, 1]
    assert len(small.calls) == 4
    never = build_graph([ScriptedModel("small", 1_000, five, 1.0), ScriptedModel("large", 8_000, five, 20.0)], BelowGate())
    assert [len(s["attempts"]) for s in never.invoke({"question": QUESTION})["steps"]] == [2] * 5  # default: no stickiness
    with pytest.raises(ValueError, match="stick_after"):
        RouterContext(stick_after=0)


def test_three_tiers_ask_the_gate_again_on_each_escalated_draft():
    small = ScriptedModel("s", 1_000, SOLUTION, 1.0)
    medium = ScriptedModel("m", 4_000, SOLUTION, [9.0, 1.0, 9.0])
    large = ScriptedModel("l", 16_000, SOLUTION, 20.0)
    result = build_graph([small, medium, large], BelowGate()).invoke({"question": QUESTION})
    assert [s["tier"] for s in result["steps"]] == [1, 2, 1]
    assert [len(s["attempts"]) for s in result["steps"]] == [2, 3, 2]


def test_gate_can_be_chosen_per_run_by_name():
    small, large = _pair()
    graph = build_graph([small, large], {"never": NeverGate(), "always": AlwaysGate()})
    assert graph.invoke({"question": QUESTION})["escalations"] == 0
    assert graph.invoke({"question": QUESTION}, context=RouterContext(gate="always"))["escalations"] == 3
    with pytest.raises(ValueError, match="Unknown gate"):
        graph.invoke({"question": QUESTION}, context=RouterContext(gate="nope"))


def test_loop_stops_at_the_step_limit_without_a_final_answer():
    small, large = _pair(draft_script=["1+1=2"])
    result = build_graph([small, large], NeverGate()).invoke({"question": QUESTION}, context=RouterContext(max_steps=5))
    assert len(result["steps"]) == 5 and result["stop_reason"] == "max_steps" and result["answer"] is None


def test_loop_stops_on_the_budget():
    small, large = _pair(draft_script=["1+1=2"])
    per_step = 2 * 1_000 * (len("1+1=2") + 1)
    result = build_graph([small, large], NeverGate()).invoke(
        {"question": QUESTION}, context=RouterContext(budget_flops=2.5 * per_step)
    )
    assert len(result["steps"]) == 3 and result["stop_reason"] == "budget"
    assert result["totals"]["flops"] >= 2.5 * per_step


@pytest.mark.parametrize(("question", "match"), [("", "empty"), ("   \n", "empty"), (42, "string"), ("x" * 9000, "characters")])
def test_bad_questions_get_a_clear_error(question, match):
    small, large = _pair()
    with pytest.raises(BadQuestionError, match=match):
        build_graph([small, large], NeverGate()).invoke({"question": question})
    assert small.calls == []


def test_step_without_a_break_is_kept_and_flagged_truncated():
    small = ScriptedModel("small", 1_000, ["12+7=19 and then some more text"], 10.0, truncate_at=8)
    large = ScriptedModel("large", 8_000, SOLUTION, 20.0)
    result = build_graph([small, large], NeverGate()).invoke(
        {"question": QUESTION}, context=RouterContext(max_steps=2, max_step_tokens=8)
    )
    assert [s["truncated"] for s in result["steps"]] == [True, True]
    assert result["steps"][0]["text"] == "12+7=19 "


LONG_SOLUTION = [f"{i}+1={i + 1}" for i in range(8)] + ["\\boxed{9}"]  # 9 steps, 5 super-steps each when escalated


@pytest.mark.parametrize("config", [None, {"max_concurrency": 2}, [{"tags": ["a"]}, {"tags": ["b"]}]], ids=["none", "dict", "list"])
def test_batch_keeps_the_graphs_recursion_limit(config):
    """LangChain's batch fills in the default limit of 25 super-steps; long escalated answers need more."""
    small, large = ScriptedModel("small", 1_000, LONG_SOLUTION, 1.0), ScriptedModel("large", 8_000, LONG_SOLUTION, 20.0)
    graph = build_graph([small, large], AlwaysGate())
    results = graph.batch([{"question": QUESTION}] * 2, config)
    assert [len(r["steps"]) for r in results] == [9, 9] and all(r["answer"] == "9" for r in results)
    assert [i for i, _ in sorted(graph.batch_as_completed([{"question": QUESTION}] * 2, config))] == [0, 1]


def test_abatch_keeps_the_graphs_recursion_limit():
    import asyncio

    small, large = ScriptedModel("small", 1_000, LONG_SOLUTION, 1.0), ScriptedModel("large", 8_000, LONG_SOLUTION, 20.0)
    results = asyncio.run(build_graph([small, large], AlwaysGate()).abatch([{"question": QUESTION}] * 2))
    assert [len(r["steps"]) for r in results] == [9, 9]


def test_a_recursion_limit_the_caller_sets_still_wins():
    from langgraph.errors import GraphRecursionError

    small, large = ScriptedModel("small", 1_000, LONG_SOLUTION, 1.0), ScriptedModel("large", 8_000, LONG_SOLUTION, 20.0)
    with pytest.raises(GraphRecursionError):
        build_graph([small, large], AlwaysGate()).batch([{"question": QUESTION}], {"recursion_limit": 10})


@pytest.mark.parametrize("returned", [None, {"text": "12+7=19"}])
def test_a_backend_that_returns_no_step_output_is_one_clear_error(returned):
    class Broken:
        name, n_params = "broken", 10

        def generate_step(self, *args, **kwargs):
            return returned

    from stepgraph.errors import ModelOutputError

    graph = build_graph([Broken(), Broken()], NeverGate())
    with pytest.raises(ModelOutputError, match=f"broken.generate_step returned {type(returned).__name__}, not a StepOutput"):
        graph.invoke({"question": QUESTION})
