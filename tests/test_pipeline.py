"""Bring-your-own pipeline through the one CLI and a run spec: a GSM8K-format file, the rollout verifier,
collect → train → calibrate → evaluate → bench → solve (tiers: the shipped pair as transformers directories)."""

import json
from pathlib import Path

import pytest
from cli_json import run
from shipped import shipped_parameters
from stepgraph.training.data.store import TraceStore

from stepgraph.cli import main
from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR
from stepgraph.testbed import testbed_task as shipped_task

pytestmark = pytest.mark.slow


def write_gsm8k(path: Path, n: int = 40, seed: int = 11) -> None:
    """Testbed problems in GSM8K's published format: question, answer ending in '#### N'."""
    with path.open("w") as f:
        for p in shipped_task().generate("test", n, seed=seed):
            f.write(json.dumps({"question": p.question, "answer": "\n".join(p.steps) + f"\n#### {p.answer}"}) + "\n")


def write_spec(tmp_path: Path, alpha: float = 0.1) -> Path:
    return gsm8k_spec(tmp_path, f"""
[[tiers]]
kind = "transformers"
path = "{DRAFT_MODEL_DIR}"
[[tiers]]
kind = "transformers"
path = "{TARGET_MODEL_DIR}"
prices = {{ input = 1.0, cached_input = 0.5, output = 2.0 }}""", alpha=alpha, splits="train = 6, calibration = 10, test = 3", max_steps=6)


def gsm8k_spec(tmp_path: Path, tiers: str, *, alpha: float, splits: str, max_steps: int, extra: str = "") -> Path:
    """A run spec over ``tmp_path / 'gsm8k.jsonl'`` with the ``tiers`` tables; the store and artifacts under ``tmp_path``."""
    spec = tmp_path / "run.toml"
    spec.write_text(f"""
alpha = {alpha}{tiers}
[data]
source = "gsm8k"
path = "{tmp_path / 'gsm8k.jsonl'}"
splits = {{ {splits} }}
[verifier]
kind = "rollout"
k = 2
m = 1
max_steps = {max_steps}
[sampling]
max_steps = {max_steps}{extra}
[paths]
store = "{tmp_path / 'traces.sqlite'}"
policy = "{tmp_path / 'policy'}"
gate = "{tmp_path / 'gate'}"
bench = "{tmp_path / 'bench'}"
""")
    return spec


def test_run_spec_pipeline_end_to_end(tmp_path, capsys):
    write_gsm8k(tmp_path / "gsm8k.jsonl")
    spec = str(write_spec(tmp_path))
    assert run(capsys, "collect", "--config", spec, "--split", "train", "--concurrency", "2")["collected"] == 6
    assert run(capsys, "collect", "--config", spec, "--split", "calibration")["collected"] == 10
    assert run(capsys, "collect", "--config", spec, "--split", "calibration") == {  # resumes: nothing left to do
        "collected": 0, "duplicates": 0, "skipped": 10, "total": 16, "store": str(tmp_path / "traces.sqlite"), "split": "calibration"}
    with TraceStore(tmp_path / "traces.sqlite") as store:
        tiers = store.meta("models")
        episodes = list(store.episodes("train"))
    assert [t["backend"] for t in tiers] == ["transformers"] * 2 and tiers[0]["features"] == ["logit_confidence", "api_confidence"]
    assert all(s.draft_correct is not None and s.escalated_correct is not None for e in episodes for s in e.steps)

    # 10 calibration episodes < 49 at α = 0.02: the online κ is kept, and the artifact claims no guarantee
    too_few = run(capsys, "train", "--config", spec, "--steps", "5", "--alpha", "0.02")
    assert too_few["guarantee"] == "none"
    assert json.loads((tmp_path / "policy" / "policy.json").read_text())["guarantee"]["type"] == "none"
    trained = run(capsys, "train", "--config", spec, "--steps", "10", "--calibration-split", "")
    assert trained["alpha"] == 0.1 and trained["guarantee"] == "none"
    manifest = json.loads((tmp_path / "policy" / "policy.json").read_text())
    assert manifest["tiers"] == tiers  # format 3 records the tiers at the top level

    calibrated = run(capsys, "calibrate", "--config", spec)
    assert calibrated["episodes"] == 10 and calibrated["met"] and calibrated["misses"] <= calibrated["allowed"] == 0
    assert {row["alpha"] for row in calibrated["curve"]} >= {0.02, 0.1} and {"needs_episodes": 49, "alpha": 0.02} in calibrated["curve"]
    gate = json.loads((tmp_path / "gate" / "gate.json").read_text())
    assert gate["gate"] == "policy" and gate["tiers"] == tiers
    assert json.loads((tmp_path / "gate" / "policy.json").read_text())["kappa"] == calibrated["threshold"]
    looser = run(capsys, "calibrate", "--config", spec, "--alpha", "0.3", "--out", str(tmp_path / "gate30"))  # no retraining
    assert looser["threshold"] >= calibrated["threshold"] and looser["flops_vs_target"] <= calibrated["flops_vs_target"]

    report = run(capsys, "evaluate", "--config", spec, "--splits", "test", "--concurrency", "2")
    rows = report["test"]
    assert set(rows) == {"target", "draft", "policy"} and rows["target"]["relative_coverage"] == 1.0
    assert rows["target"]["mean_usd"] > 0 and 0 < rows["draft"]["flops_vs_target"] < 1

    files = run(capsys, "bench", "--config", spec, "--seeds", "0", "--problems", "2", "--calibration-problems", "3", "--frontier", "0.5")
    bench_report = json.loads(Path(files["json"]).read_text())
    summary = bench_report["summary"]
    assert set(bench_report["frontier"]["levels"]["0.5"]["points"]) == {"policy", "rule-threshold"}
    assert {"target", "draft", "policy", "threshold", "steer", "rsd"} <= set(summary) and "oracle" not in summary
    assert all(summary[m]["flops"]["mean"] > 0 for m in summary)

    solved = run(capsys, "solve", "--config", spec, shipped_task().generate("test", 1, seed=3)[0].question)
    assert solved["stop_reason"] in ("final_answer", "max_steps") and solved["totals"]["flops"] > 0 and set(solved["costs"]) <= {"0", "1"}


def test_a_policy_over_other_tiers_is_refused(tmp_path, capsys):
    (tmp_path / "gsm8k.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    spec = write_spec(tmp_path)
    other = spec.read_text().replace(f'path = "{TARGET_MODEL_DIR}"', f'path = "{DRAFT_MODEL_DIR}"\nname = "target"')
    spec.write_text(other.replace("splits = { train = 6, calibration = 10, test = 3 }", "splits = { test = 1 }"))
    from stepgraph.defaults import DEFAULT_POLICY_DIR

    assert main(["evaluate", "--config", str(spec), "--policy", str(DEFAULT_POLICY_DIR), "--splits", "test"]) == 2
    err = capsys.readouterr().err
    assert f"{shipped_parameters('target'):,} params" in err and f"{shipped_parameters('draft'):,} params" in err
    assert "--allow-other-tiers" in err
