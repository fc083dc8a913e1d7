"""Three tiers through the ordinary CLI stages: collect --record-tiers → train (K-tier) → calibrate --runs → solve,
with a run spec of the user's tiers (here the shipped draft, mid and target) and on the testbed; and the options it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from cli_json import run
from stepgraph.training.data.records import Episode, StepRecord
from stepgraph.training.data.store import TraceStore

from stepgraph.cli import main
from stepgraph.defaults import DEFAULT_POLICY_DIR
from stepgraph.routing.gates import PolicyGate
from stepgraph.routing.gates import PolicyGate as TierPolicyGate
from stepgraph.testbed import DRAFT_MODEL_DIR, MID_MODEL_DIR, TARGET_MODEL_DIR
from stepgraph.testbed import testbed_task as shipped_task

QUESTION = shipped_task().generate("test", 1, seed=3)[0].question


def write_spec(tmp_path: Path, tier_dirs: tuple[Path, ...] = (DRAFT_MODEL_DIR, MID_MODEL_DIR, TARGET_MODEL_DIR),
               name: str = "run.toml") -> Path:
    tiers = "".join(f'[[tiers]]\nkind = "transformers"\npath = "{d}"\n' for d in tier_dirs)
    spec = tmp_path / name
    spec.write_text(f"""alpha = 0.25
{tiers}
[data]
source = "testbed"
splits = {{ train = 5, calibration = 6, test = 2 }}
[verifier]
kind = "testbed"
[sampling]
max_steps = 8
[paths]
store = "{tmp_path / 'traces.sqlite'}"
policy = "{tmp_path / 'policy'}"
gate = "{tmp_path / 'gate'}"
""")
    return spec


def refused(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """A 3-tier spec whose train and calibration splits are collected with every tier's step."""
    tmp_path = tmp_path_factory.mktemp("tiers")
    spec = write_spec(tmp_path)
    for split in ("train", "calibration"):
        assert main(["collect", "--config", str(spec), "--split", split, "--record-tiers"]) == 0
    return spec


@pytest.mark.slow  # loads the shipped models
def test_collect_records_every_tier_and_train_picks_the_k_tier_policy(collected, capsys):
    with TraceStore(collected.parent / "traces.sqlite") as store:
        names = [t["name"] for t in store.meta("models")]
        episodes = list(store.episodes("train"))
    assert names == ["draft", "mid", "target"]
    tables = [s.tiers for e in episodes for s in e.steps]
    assert tables and all(len(t) == 3 and all(entry["correct"] is not None for entry in t) for t in tables)

    trained = run(capsys, "train", "--config", str(collected), "--warm-start", "100", "--steps", "0")
    assert trained["format"] == "stepgraph.policy" and trained["tiers"] == names  # the one policy format (K = 3)
    assert trained["alpha"] == 0.25 and trained["guarantee"] == "split-conformal" and trained["calibration_episodes"] == 6
    manifest = json.loads((collected.parent / "policy" / "policy.json").read_text())
    assert [t["name"] for t in manifest["tiers"]] == names and manifest["training"]["args"]["warm_start"] == 100
    assert manifest["training"]["args"]["batch_size"] == 16  # the K-tier trainer's own default, not the 2-tier one's


@pytest.mark.slow  # loads the shipped models
def test_calibrate_runs_then_solve_with_the_k_tier_policy(collected, capsys):
    policy = collected.parent / "policy"
    if not (policy / "policy.json").is_file():
        run(capsys, "train", "--config", str(collected), "--warm-start", "100", "--steps", "0")
    before = json.loads((policy / "policy.json").read_text())["kappa"]
    calibrated = run(capsys, "calibrate", "--config", str(collected), "--runs", "6", "--concurrency", "2")
    assert calibrated["kappa_from"] == "calibration runs" and calibrated["problems"] == 6 and calibrated["kappa_before"] == before
    assert calibrated["misses"] <= 0 and calibrated["guarantee"] == "split-conformal"  # ⌊0.25 · 7⌋ − 1 = 0 misses allowed
    gate_dir = collected.parent / "gate"
    manifest = json.loads((gate_dir / "policy.json").read_text())
    assert manifest["format"] == "stepgraph.policy" and manifest["network"]["tier_input"]
    assert manifest["kappa"] == calibrated["threshold"]
    assert manifest["training"]["calibration_runs"]["problems"] == 6 and manifest["training"]["kappa_from_traces"] == before
    gate = PolicyGate.from_path(gate_dir)
    assert isinstance(gate, TierPolicyGate) and gate.threshold == calibrated["threshold"]

    solved = run(capsys, "solve", "--config", str(collected), "--json", QUESTION)  # the spec's gate: paths.gate, over 3 tiers
    assert solved["stop_reason"] == "final_answer" and solved["answer"]
    assert {a["model"] for s in solved["steps"] for a in s["attempts"]} <= {"draft", "mid", "target"}
    first = solved["steps"][0]  # scored by the calibrated K-tier policy on the draft's step
    p = 1 - gate.artifact.probabilities(first["observation"], 0)[0]  # the gate scores its log-odds
    assert first["gate_score"] == pytest.approx(math.log(p / (1 - p)), abs=1e-4)
    # The tier check: the same gate on a spec of two tiers is refused, naming the tiers.
    two = write_spec(collected.parent, (DRAFT_MODEL_DIR, TARGET_MODEL_DIR), name="two.toml")
    assert "calibrated on the tiers" in refused(capsys, "solve", "--config", str(two), QUESTION)


@pytest.mark.slow  # loads the shipped models
def test_testbed_collects_three_tiers_and_trains_a_column_subset(tmp_path, capsys):
    store = str(tmp_path / "t.sqlite")
    assert "add --record-tiers" in refused(capsys, "collect", "--tiers", "3", "--problems", "2", "--store", store)
    assert run(capsys, "collect", "--tiers", "3", "--record-tiers", "--problems", "3", "--store", store)["collected"] == 3
    with TraceStore(store) as opened:
        assert [t["name"] for t in opened.meta("models")] == ["draft", "mid", "target"]
    trained = run(capsys, "train", "--store", store, "--out", str(tmp_path / "p"), "--columns", "0", "2", "--warm-start", "20",
                  "--steps", "2", "--calibration-split", "")
    assert trained["tiers"] == ["draft", "target"] and trained["guarantee"] == "none"
    # Its tiers are the shipped pair: calibrate --runs runs it there (testbed path), and records the guarantee it now has.
    calibrated = run(capsys, "calibrate", "--policy", str(tmp_path / "p"), "--runs", "3", "--alpha", "0.25", "--out", str(tmp_path / "g"))
    assert calibrated["problems"] == 3 and calibrated["guarantee"] == "split-conformal"
    assert json.loads((tmp_path / "g" / "policy.json").read_text())["guarantee"]["type"] == "split-conformal"
    assert "--columns takes at least two" in refused(capsys, "train", "--store", store, "--out", str(tmp_path / "q"), "--columns", "2", "0")
    assert "--columns takes at least two" in refused(capsys, "train", "--store", store, "--out", str(tmp_path / "q"), "--columns", "0", "3")


def _two_tier_episode(problem_id: str) -> Episode:
    step = StepRecord(index=0, observation={}, action=0, mu_escalate=0.5, draft="a", escalated="b", draft_correct=True,
                      escalated_correct=True, draft_flops=1.0, escalate_flops=2.0, cost=1.0)
    return Episode(problem_id, "q", "1", [step], reward=1, target_reward=1, target_flops=2.0)


def test_a_store_without_tier_tables_is_refused_naming_record_tiers(tmp_path, capsys):
    store = tmp_path / "t.sqlite"
    with TraceStore(store) as opened:
        opened.set_meta("models", [{"name": n, "parameters": p} for n, p in (("a", 1), ("b", 2), ("c", 3))])
        opened.add(_two_tier_episode("p0"), "train")
    error = refused(capsys, "train", "--store", str(store), "--out", str(tmp_path / "p"))  # 3 tiers: the K-tier trainer
    assert "stepgraph collect --record-tiers" in error and "'p0'" in error
    assert "--allocator trains" in refused(capsys, "train", "--store", str(store), "--allocator", "--tier-policy")


@pytest.mark.slow  # loads the shipped models
def test_calibrate_runs_on_the_shipped_2_tier_policy_changes_kappa_and_records_it(tmp_path, capsys):
    out = tmp_path / "gate"
    calibrated = run(capsys, "calibrate", "--policy", str(DEFAULT_POLICY_DIR), "--runs", "10", "--alpha", "0.1", "--out", str(out))
    shipped = PolicyGate.from_path(DEFAULT_POLICY_DIR).artifact
    manifest = json.loads((out / "policy.json").read_text())
    assert manifest["format"] == "stepgraph.policy" and manifest["alpha"] == 0.1 and manifest["kappa"] != shipped.kappa
    from_traces = shipped.training.get("kappa_from_traces", shipped.kappa)  # the shipped κ may itself come from runs
    assert manifest["training"]["kappa_from"] == "calibration runs" and manifest["training"]["kappa_from_traces"] == from_traces
    assert manifest["training"]["calibration_runs"]["problems"] == 10 and manifest["guarantee"]["calibration_episodes"] == 10
    gate = json.loads((out / "gate.json").read_text())
    assert gate["options"]["threshold"] == manifest["kappa"] and gate["calibration"]["kappa_from"] == "calibration runs"
    assert [row["alpha"] for row in calibrated["curve"]][-1] == 0.3 and calibrated["problems"] == 10


@pytest.mark.slow  # loads the shipped models
def test_calibrate_runs_with_delta_keeps_a_safer_kappa_and_records_the_pac_guarantee(tmp_path, capsys):
    runs = ("calibrate", "--policy", str(DEFAULT_POLICY_DIR), "--runs", "30", "--alpha", "0.3")
    conformal = run(capsys, *runs, "--out", str(tmp_path / "conformal"))
    pac = run(capsys, *runs, "--delta", "0.2", "--out", str(tmp_path / "pac"))
    manifest = json.loads((tmp_path / "pac" / "policy.json").read_text())
    assert manifest["guarantee"] == {"type": "pac", "coverage": 0.7, "confidence": 0.8, "calibration_episodes": 30}
    # fewer misses allowed (6 of 30 against 8), so κ is no higher: the policy escalates iff its score ≥ κ
    assert pac["threshold"] <= conformal["threshold"] and pac["misses"] <= 6 and pac["delta"] == 0.2


def test_calibrate_runs_refuses_what_it_cannot_certify_or_calibrate(capsys):
    assert "needs at least 9 calibration problems" in refused(capsys, "calibrate", "--runs", "3", "--alpha", "0.1")
    assert "needs at least 114 calibration problems" in refused(capsys, "calibrate", "--runs", "100", "--delta", "0.1")
    assert "add --runs N" in refused(capsys, "calibrate", "--delta", "0.1")
    assert "--runs calibrates a policy" in refused(capsys, "calibrate", "--runs", "20", "--gate", "threshold", "--alpha", "0.1")


def test_the_three_tier_example_spec_names_the_shipped_tiers_cheapest_first():
    from stepgraph.training.spec import load_spec

    spec = load_spec(Path(__file__).parent.parent / "examples" / "three_tiers.toml")
    assert [Path(str(t.path)).name for t in spec.tiers] == [d.name for d in (DRAFT_MODEL_DIR, MID_MODEL_DIR, TARGET_MODEL_DIR)]
    assert spec.verifier.kind == "testbed" and spec.data.splits["calibration"] >= 100  # its header runs calibrate --runs 100


def test_collect_takes_testbed_tiers_only_without_a_spec(tmp_path, capsys):
    error = refused(capsys, "collect", "--config", str(write_spec(tmp_path)), "--tiers", "3", "--record-tiers")
    assert "--tiers picks the shipped testbed tiers" in error and "[[tiers]]" in error


def test_train_options_keep_each_trainers_own_defaults_unless_given():
    import argparse

    from stepgraph.training.learning.cpo import CPOArgs
    from stepgraph.training.learning.cpo_tiers import TierCPOArgs

    from stepgraph.cli.dataclass_options import add_dataclass_options, dataclass_from_args

    parser = argparse.ArgumentParser()
    add_dataclass_options(parser, CPOArgs, variant=(TierCPOArgs, "K-tier"))
    defaults = parser.parse_args([])
    assert (dataclass_from_args(CPOArgs, defaults).batch_size, dataclass_from_args(TierCPOArgs, defaults).batch_size) == (5, 16)
    assert dataclass_from_args(CPOArgs, defaults).alpha == 0.02 and dataclass_from_args(TierCPOArgs, defaults).alpha == 0.03
    given = parser.parse_args(["--batch-size", "7", "--alpha", "0.1"])
    assert dataclass_from_args(TierCPOArgs, given).batch_size == dataclass_from_args(CPOArgs, given).batch_size == 7
    assert dataclass_from_args(TierCPOArgs, given).alpha == 0.1
