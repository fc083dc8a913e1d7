"""The run-spec pipeline against two real vLLM OpenAI-compatible servers (the shipped draft and target).

A GSM8K-format file written from testbed problems; collect with the rollout verifier through the
served target → train → calibrate → evaluate → bench → solve, all through the CLI and one spec.
Also prints problems per second of evaluation at concurrency 1, 4 and 16 (a benchmark, not timed).
"""

import json
import sys
import time
from pathlib import Path

import pytest
from cli_json import run
from stepgraph.training.collection.runs import run_gate
from stepgraph.training.data.store import TraceStore
from stepgraph.training.spec import load_spec
from test_pipeline import gsm8k_spec, write_gsm8k

from stepgraph.routing.gates import AlwaysTargetGate
from stepgraph.testbed import testbed_task as shipped_task

pytestmark = pytest.mark.integration


def write_spec(tmp_path: Path, urls: dict[str, str]) -> Path:
    write_gsm8k(tmp_path / "gsm8k.jsonl", 60, seed=21)
    return gsm8k_spec(tmp_path, f"""
[[tiers]]
kind = "server"
base_url = "{urls['draft']}"
model = "draft"
n_params = 156352
logprobs_are_logits = true
[[tiers]]
kind = "server"
base_url = "{urls['target']}"
model = "target"
n_params = 1100416""", alpha=0.1, splits="train = 8, calibration = 12, test = 16", max_steps=8, extra="""
[collect]
feature = "logit_confidence"
threshold = 16.0""")


def test_pipeline_against_vllm_servers(servers, tmp_path, capsys):
    spec = str(write_spec(tmp_path, {role: server.url for role, server in servers.items()}))
    assert run(capsys, "collect", "--config", spec, "--split", "train", "--concurrency", "4")["collected"] == 8
    assert run(capsys, "collect", "--config", spec, "--split", "calibration", "--concurrency", "4")["collected"] == 12
    with TraceStore(tmp_path / "traces.sqlite") as store:
        episodes = list(store.episodes())
        tiers = store.meta("models")
    assert [t["backend"] for t in tiers] == ["server", "server"] and tiers[0]["features"] == ["logit_confidence"]
    steps = [s for e in episodes for s in e.steps]
    assert steps and all(s.observation["logit_confidence"] is not None and s.observation["api_confidence"] is None for s in steps)
    assert all(s.draft_correct is not None and s.escalated_correct is not None for s in steps)

    trained = run(capsys, "train", "--config", spec, "--steps", "20", "--calibration-split", "", "--ignore-feature", "api_confidence")
    assert trained["guarantee"] == "none"
    calibrated = run(capsys, "calibrate", "--config", spec)
    assert calibrated["episodes"] == 12 and calibrated["met"]
    assert json.loads((tmp_path / "gate" / "gate.json").read_text())["tiers"] == tiers

    report = run(capsys, "evaluate", "--config", spec, "--splits", "test", "--problems", "6", "--concurrency", "4")["test"]
    assert report["target"]["relative_coverage"] == 1.0 and report["policy"]["mean_flops"] > 0
    assert 0 < report["draft"]["flops_vs_target"] < 1 and report["draft"]["escalation_rate"] == 0.0

    files = run(capsys, "bench", "--config", spec, "--seeds", "0", "--problems", "4", "--calibration-problems", "4", "--concurrency", "4")
    summary = json.loads(Path(files["json"]).read_text())["summary"]
    assert {"target", "draft", "policy", "threshold", "steer"} <= set(summary)
    assert all(summary[m]["flops"]["mean"] > 0 and 0 <= summary[m]["covered"]["mean"] <= 1 for m in summary)

    solved = run(capsys, "solve", "--config", spec, shipped_task().generate("test", 1, seed=3)[0].question)
    assert solved["totals"]["flops"] > 0

    # problems per second at concurrency 1, 4, 16 (printed for BENCHMARKS; results must not depend on it)
    loaded = load_spec(spec)
    served = loaded.build_tiers()
    items = loaded.items("test")
    rates, answers = {}, {}
    for concurrency in (1, 4, 16):
        started = time.perf_counter()
        rows = run_gate(served, AlwaysTargetGate(), items, context=loaded.context(), concurrency=concurrency, progress=False)
        rates[concurrency] = len(items) / (time.perf_counter() - started)
        answers[concurrency] = [r["problem_id"] for r in rows]
    with capsys.disabled():
        print(f"\ntarget-only problems/s over {len(items)} problems against vLLM servers: "
              + ", ".join(f"concurrency {c}: {r:.2f}" for c, r in rates.items()), file=sys.stderr)
    assert answers[1] == answers[4] == answers[16] == [i.problem_id for i in items]
