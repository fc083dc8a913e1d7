"""shipped_task(): the embedded task is the one the shipped tiers were trained on, and its users follow it."""

import json
import re

import pytest
from stepgraph.training.collection.collect import testbed_items as make_items
from stepgraph.training.collection.verifiers import TestbedVerifier
from stepgraph.training.learning import radar

from stepgraph import testbed
from stepgraph.testbed import task, wordproblems
from stepgraph.testbed import testbed_task as shipped_task


def _ship(tmp_path, monkeypatch, summary: dict) -> None:
    """The shipped tiers' directories replaced by ones whose target's training.json is ``summary``."""
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "training.json").write_text(json.dumps(summary))
    monkeypatch.setattr(testbed, "TIER_DIRS", {2: (tmp_path / "draft", tmp_path / "target"),
                                               3: (tmp_path / "draft", tmp_path / "mid", tmp_path / "target")})


@pytest.fixture
def shipped_v2(tmp_path, monkeypatch):
    """The shipped tiers' directories replaced by ones whose target says ``"task": "v2"``."""
    _ship(tmp_path, monkeypatch, {"task": "v2", "parameters": 1})
    return tmp_path


def test_the_shipped_tiers_name_task_v2_and_get_it():
    assert json.loads((testbed.TIER_DIRS[2][-1] / "training.json").read_text())["task"] == "v2"
    assert shipped_task() is wordproblems


def test_a_target_naming_no_task_gets_v1(tmp_path, monkeypatch):
    _ship(tmp_path, monkeypatch, {"parameters": 1})  # as v1's training summaries are
    assert shipped_task() is task
    assert make_items("test", 3, seed=4)[1].question == task.generate("test", 3, seed=4)[1].question


def test_a_v2_target_switches_items_verifier_and_radar_splits(shipped_v2):
    assert shipped_task() is wordproblems
    problems = wordproblems.generate("test", 3, seed=4)
    assert [i.question for i in make_items("test", 3, seed=4)] == [p.question for p in problems]
    verifier = TestbedVerifier(problems)
    p = problems[0]
    assert verifier.verify(p.question, "", [], p.steps[0]) is True
    slip = re.sub(r"= (\$?)(\d+)", lambda m: f"= {m[1]}{int(m[2]) + 1}", p.steps[0])
    assert slip != p.steps[0] and verifier.verify(p.question, "", [], slip) is False
    assert verifier.verify("a question of no split", "", [], p.steps[0]) is None
    shifted = radar.split_problems("shifted", 5)
    assert len(shifted) == 5 and all(len(q.derived) >= radar.SHIFTED_MIN_STEPS for q in shifted)
    assert radar.split_items("calibration", 2)[0].question == wordproblems.generate("calibration", 2, seed=1)[0].question


def test_a_task_this_stepgraph_does_not_know_is_a_clear_error(shipped_v2):
    (shipped_v2 / "target" / "training.json").write_text(json.dumps({"task": "v9"}))
    with pytest.raises(ValueError, match="names task 'v9'; this stepgraph knows"):
        shipped_task()
