"""collect → train → evaluate on a few problems with the shipped pair, and a killed collection."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from stepgraph.training.collection.observations import reobserve
from stepgraph.training.data.store import TraceStore

from stepgraph.cli import main
from stepgraph.graph import build_graph
from stepgraph.models.base import StepOutput
from stepgraph.routing.gates import PolicyGate
from stepgraph.testbed import load_pair


@pytest.mark.slow
def test_collect_train_evaluate(tmp_path, capsys):
    store, policy = tmp_path / "traces.sqlite", tmp_path / "policy"
    assert main(["collect", "--store", str(store), "--problems", "4", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["collected"] == 4
    assert main(["collect", "--store", str(store), "--problems", "6", "--seed", "3"]) == 0  # resumes
    assert json.loads(capsys.readouterr().out) == {"collected": 2, "duplicates": 0, "skipped": 4, "total": 6}
    with TraceStore(store) as s:
        episodes = list(s.episodes())
    for e in episodes:
        assert e.steps and all(0.0 < st.mu_escalate < 1.0 for st in e.steps)
        assert all(st.escalated is not None and st.escalated_correct is not None for st in e.steps)
        assert all(st.cost == pytest.approx(st.draft_flops + st.action * st.escalate_flops) for st in e.steps)
        assert e.target_flops > 0 and e.reward in (0, 1) and e.target_reward in (0, 1)
        # the draft's whole output is kept, so later feature schemas can be recomputed from the trace
        assert all(StepOutput.from_dict(st.draft_output).text == st.draft for st in e.steps)
        assert all(len(st.draft_output["token_logprobs"]) == len(st.draft_output["tokens"]) for st in e.steps)
        assert [st.observation for st in reobserve(e).steps] == [st.observation for st in e.steps]
    copy = tmp_path / "copy.sqlite"
    assert main(["reobserve", "--store", str(store), "--out", str(copy)]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 6
    assert main(["reobserve", "--store", str(store), "--out", str(copy)]) == 2  # never into a store that holds episodes
    assert "already holds episodes" in capsys.readouterr().err
    assert main(["train", "--store", str(store), "--out", str(policy), "--steps", "20"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert math.isfinite(trained["kappa"]) and trained["episodes"] == 6  # κ on the log-odds scale
    assert len((policy / "metrics.jsonl").read_text().splitlines()) == 20
    gate = PolicyGate.from_path(policy)
    result = build_graph(load_pair(), gate).invoke({"question": episodes[0].question})
    assert result["steps"] and all(s["escalated"] == (s["gate_score"] >= gate.threshold) for s in result["steps"])  # π ≥ κ
    assert main(["evaluate", "--policy", str(policy), "--splits", "calibration", "--problems", "3"]) == 0
    report = json.loads(capsys.readouterr().out)["calibration"]
    assert set(report) == {"target", "draft", "policy"}
    # the target row is the target writing every step alone: nothing escalated, no draft paid
    assert report["draft"]["escalation_rate"] == 0.0 and report["target"]["escalation_rate"] == 0.0
    assert report["target"]["relative_coverage"] == 1.0 and report["target"]["flops_vs_target"] == 1.0


def test_train_on_a_missing_store_fails_clearly(tmp_path, capsys):
    assert main(["train", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "p")]) == 2
    assert "collect" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_collection_keeps_finished_episodes_and_resumes(tmp_path):
    store = tmp_path / "traces.sqlite"
    command = [sys.executable, "-m", "stepgraph", "collect", "--store", str(store), "--problems", "40"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    finished = 0
    while time.time() < deadline and finished < 2:
        time.sleep(0.5)
        if store.exists():
            with TraceStore(store) as s:
                finished = len(s)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert finished >= 2, "collection wrote nothing in time"
    with TraceStore(store) as s:
        kept = len(s)
        assert kept >= finished and all(e.steps for e in s.episodes())
    assert main(["collect", "--store", str(store), "--problems", str(kept + 1)]) == 0
    with TraceStore(store) as s:
        assert len(s) == kept + 1
