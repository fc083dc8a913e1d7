"""The decomposer mode: a planner's numbered sub-questions, then routed steps that answer them."""

import pytest

from stepgraph.graph import build_graph
from stepgraph.graph.decompose import Decomposer, parse_plan, task_prompt
from stepgraph.routing.allocator import FixedAllocator
from stepgraph.routing.gates import AlwaysDraftGate
from tests.scripted import ScriptedModel

QUESTION = "Ann has 3 coins. She gets 2 more, then doubles them. How many coins does she have?"
PLAN = "1. How many coins does Ann have after she gets 2 more?\n2) How many after doubling?\n3. What is the final answer?"
ANSWERS = ["3+2=5", "5*2=10", "\\boxed{10}"]


class ScriptedPlanner(ScriptedModel):
    """A tier whose first call (the planning prompt, no steps) returns the plan, later calls the answers."""

    def __init__(self, name: str, n_params: int, plan: str, answers: list[str]) -> None:
        super().__init__(name, n_params, answers)
        self.plan = plan

    def generate_step(self, question, steps, **kwargs):
        out = super().generate_step(question, steps, **kwargs)
        if question.startswith("Break the following problem"):
            return type(out)(**{**out.__dict__, "text": self.plan, "generated_tokens": len(self.plan)})
        return out


def test_parse_plan_keeps_numbered_items_in_order():
    assert parse_plan(PLAN + "\nSome remark.\n4. extra", max_items=3) == [
        "How many coins does Ann have after she gets 2 more?", "How many after doubling?", "What is the final answer?"]
    assert parse_plan("no list here", 8) == []


def test_decomposer_plans_then_answers_each_sub_question_with_a_boxed_final_step():
    draft = ScriptedModel("draft", 100, ANSWERS)
    target = ScriptedPlanner("target", 1000, PLAN, ANSWERS)
    graph = build_graph([draft, target], AlwaysDraftGate(), decomposer=Decomposer())
    result = graph.invoke({"question": QUESTION})
    assert result["plan"] == parse_plan(PLAN, 8) and len(result["plan"]) == 3
    assert [s["text"] for s in result["steps"]] == ANSWERS
    assert result["steps"][-1]["text"].endswith("\\boxed{10}") and result["answer"] == "10"
    # Every step was asked for with the plan; the planner's call was charged to the target's tier.
    assert all(q == task_prompt(QUESTION, result["plan"]) for q, _ in draft.calls) and len(draft.calls) == 3
    assert "Sub-questions:\n1. How many coins" in draft.calls[0][0]
    assert len(target.calls) == 1 and result["costs"]["1"]["flops"] > 0
    assert result["question"] == QUESTION


def test_decomposer_with_allocation_sends_steps_to_the_allocated_tier():
    draft = ScriptedModel("draft", 100, ANSWERS)
    target = ScriptedPlanner("target", 1000, PLAN, ANSWERS)
    result = build_graph([draft, target], AlwaysDraftGate(), decomposer=Decomposer(), allocator=FixedAllocator(1)).invoke(
        {"question": QUESTION})
    assert len(draft.calls) == 0 and len(target.calls) == 4  # the plan, then three steps
    assert [s["tier"] for s in result["steps"]] == [1, 1, 1] and result["answer"] == "10"


def test_a_planner_that_writes_no_list_falls_back_to_the_plain_question():
    draft = ScriptedModel("draft", 100, ANSWERS)
    planner = ScriptedPlanner("target", 1000, "I would rather not.", ANSWERS)
    result = build_graph([draft, planner], AlwaysDraftGate(), decomposer=Decomposer()).invoke({"question": QUESTION})
    assert result["plan"] == [] and all(q == QUESTION for q, _ in draft.calls) and result["answer"] == "10"


async def test_decomposer_async():
    draft = ScriptedModel("draft", 100, ANSWERS)
    target = ScriptedPlanner("target", 1000, PLAN, ANSWERS)
    result = await build_graph([draft, target], AlwaysDraftGate(), decomposer=Decomposer(tier=1)).ainvoke({"question": QUESTION})
    assert len(result["plan"]) == 3 and result["answer"] == "10"


@pytest.mark.parametrize(("kwargs", "match"), [({"max_items": 0}, "max_items"), ({"max_tokens": 0}, "max_tokens")])
def test_bad_decomposer_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Decomposer(**kwargs)


def test_a_planner_tier_outside_the_graph_is_refused():
    with pytest.raises(ValueError, match="tier"):
        build_graph([ScriptedModel("d", 1, ANSWERS), ScriptedModel("t", 2, ANSWERS)], AlwaysDraftGate(),
                    decomposer=Decomposer(tier=2))
