"""Threads and checkpoints: a new question starts a fresh answer, an interrupted one resumes, and a
thread's checkpoints grow linearly with the answer's length."""

import sqlite3

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from scripted import ScriptedModel

from stepgraph.context import RouterContext
from stepgraph.graph import build_graph
from stepgraph.routing.gates import AlwaysDraftGate

ANN = "Ann has 12 coins. She gets 7 more. She gives away 5. How many coins does she have?"
ANN_STEPS = ["12+7=19", "19-5=14", "\\boxed{14}"]
BOB = "Bob has 3 pens. He gets 4 more. How many pens does he have?"
BOB_STEPS = ["3+4=7", "\\boxed{7}"]


class TwoQuestions(ScriptedModel):
    """Answers ANN and BOB with their own scripts; fails once ``fail_after`` calls were made."""

    def __init__(self, name: str, n_params: int, fail_after: int | None = None) -> None:
        super().__init__(name, n_params, ANN_STEPS)
        self.fail_after = fail_after

    def generate_step(self, question, steps, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise ConnectionError("model server went away")
        self.script = BOB_STEPS if question == BOB else ANN_STEPS
        return super().generate_step(question, steps, **kwargs)


@pytest.fixture(params=["memory", "sqlite"])
def saver(request, tmp_path):
    if request.param == "memory":
        yield InMemorySaver()
    else:
        connection = sqlite3.connect(tmp_path / "threads.sqlite", check_same_thread=False)
        yield SqliteSaver(connection)
        connection.close()


def _graph(saver, fail_after=None):
    return build_graph([TwoQuestions("small", 1_000, fail_after), TwoQuestions("large", 8_000)], AlwaysDraftGate(),
                       checkpointer=saver)


def test_a_second_question_on_a_thread_starts_a_fresh_answer(saver):
    config = {"configurable": {"thread_id": "t"}}
    graph = _graph(saver)
    ann = graph.invoke({"question": ANN}, config, context=RouterContext(seed=0))
    bob = graph.invoke({"question": BOB}, config, context=RouterContext(seed=0))
    alone = _graph(InMemorySaver()).invoke({"question": BOB}, {"configurable": {"thread_id": "alone"}}, context=RouterContext(seed=0))
    assert ann["answer"] == "14"
    assert [s["text"] for s in bob["steps"]] == BOB_STEPS and bob["answer"] == "7"
    assert [s["index"] for s in bob["steps"]] == [0, 1]
    assert bob["costs"] == alone["costs"] and bob["totals"] == alone["totals"]
    assert bob["stop_reason"] == "final_answer" and bob["escalations"] == 0
    # Ann's answer stays in the thread's history.
    assert any(len(snapshot.values.get("steps", [])) == 3 for snapshot in graph.get_state_history(config))


def test_a_new_question_after_an_interrupted_run_does_not_continue_it(saver):
    config = {"configurable": {"thread_id": "t"}}
    with pytest.raises(ConnectionError):
        _graph(saver, fail_after=2).invoke({"question": ANN}, config, context=RouterContext(seed=0))
    assert len(_graph(saver).get_state(config).values["steps"]) == 2
    bob = _graph(saver).invoke({"question": BOB}, config, context=RouterContext(seed=0))
    assert [s["text"] for s in bob["steps"]] == BOB_STEPS and bob["answer"] == "7"
    assert bob["totals"]["calls"] == 2


def test_resume_after_a_fresh_question_does_not_repeat_paid_calls(saver):
    config = {"configurable": {"thread_id": "t"}}
    _graph(saver).invoke({"question": BOB}, config, context=RouterContext(seed=0))
    with pytest.raises(ConnectionError):
        _graph(saver, fail_after=1).invoke({"question": ANN}, config, context=RouterContext(seed=0))
    draft = TwoQuestions("small", 1_000)
    resumed = build_graph([draft, TwoQuestions("large", 8_000)], AlwaysDraftGate(), checkpointer=saver).invoke(
        None, config, context=RouterContext(seed=0))
    assert [s["text"] for s in resumed["steps"]] == ANN_STEPS
    assert [len(steps) for _, steps in draft.calls] == [1, 2]  # Ann's first step is not drafted again
    assert resumed["totals"]["calls"] == 3  # one paid before the failure, two after


STEP_48 = "The count goes up by four, so now it is 12 + 4."


def checkpoint_bytes(path, n_steps: int) -> int:
    """Bytes of a SQLite checkpoint database after one run of ``n_steps`` steps of 48 characters."""
    connection = sqlite3.connect(path, check_same_thread=False)
    models = [ScriptedModel("small", 1_000, [STEP_48]), ScriptedModel("large", 8_000, [STEP_48])]
    graph = build_graph(models, AlwaysDraftGate(), checkpointer=SqliteSaver(connection))
    result = graph.invoke({"question": ANN}, {"configurable": {"thread_id": "t"}}, context=RouterContext(max_steps=n_steps))
    assert len(result["steps"]) == n_steps
    connection.commit()
    connection.close()
    return path.stat().st_size


def test_checkpoints_grow_linearly_with_the_number_of_steps(tmp_path):
    small, large = checkpoint_bytes(tmp_path / "100.sqlite", 100), checkpoint_bytes(tmp_path / "200.sqlite", 200)
    # Quadratic growth (the whole step list at every super-step) gave 3.6x here.
    assert large / small < 2.4
