"""The fault suite: each fault a careless user or a broken model can cause, and what the user gets.

Policy artifacts, non-finite scores and features, offline options, the trace store, and the
coverage guarantee. Killing and resuming a collection is covered by
tests/test_training_smoke.py::test_killed_collection_keeps_finished_episodes_and_resumes.
"""

import hashlib
import json
import math
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scripted import ScriptedModel
from stepgraph.training.calibration.guarantee import allowed_misses, calibration_guarantee, episodes_needed
from stepgraph.training.data.records import Episode, StepRecord
from stepgraph.training.data.store import TraceStore
from stepgraph.training.learning.cpo import CPOArgs

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork, kappa_from_probability
from stepgraph.cli import main
from stepgraph.defaults import API_ONLY_POLICY_DIR, DEFAULT_POLICY_DIR, LOGITS_ONLY_POLICY_DIR
from stepgraph.errors import ConfigError, PolicyFileError, TraceStoreError
from stepgraph.features import CONFIDENCE_SCHEMA, FEATURE_SCHEMA_V2
from stepgraph.graph import build_graph
from stepgraph.models.base import StepOutput
from stepgraph.routing.gates import AlwaysDraftGate, ConfidenceThresholdGate, ExploringGate, PolicyGate, RandomGate
from stepgraph.routing.gates.base import Gate, GateInput

N = len(CONFIDENCE_SCHEMA.names)
STEP = StepOutput("1+1=2", ["1"], [9.0], [[("1", -0.1)]], 10, 0, 1, False, "m")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _artifact(kappa: float = 0.5) -> PolicyArtifact:
    return PolicyArtifact(PolicyNetwork(N), kappa, 0.02, CONFIDENCE_SCHEMA, [0.0] * N, [1.0] * N)


def _observation(**values: float | None) -> dict[str, float | None]:
    return {n: None for n in CONFIDENCE_SCHEMA.names} | {"logit_confidence": 9.0, "step_index": 0.0} | values


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "policy.json"
    data = json.loads(path.read_text())
    data = edit(data) or data
    path.write_text(json.dumps(data))


def _episode(rng: random.Random, name: str) -> Episode:
    steps = []
    for t in range(2):
        obs = _observation(logit_confidence=rng.gauss(8.0, 2.0), step_index=float(t), step_tokens=8.0, is_final=0.0,
                           escalations=0.0)
        action = int(rng.random() < 0.5)
        steps.append(StepRecord(t, obs, action, 0.5, "d", "e", obs["logit_confidence"] > 7, True, 1.0, 4.0, 1.0 + 4 * action))
    return Episode(name, "q", "1", steps, reward=1, target_reward=1, target_flops=8.0)


def _store(path: Path, train: int = 8, calibration: int = 0) -> Path:
    rng = random.Random(0)
    with TraceStore(path) as store:
        store.set_meta("feature_schema", CONFIDENCE_SCHEMA.to_dict())
        for i in range(train):
            store.add(_episode(rng, f"train:{i}"), "train")
        for i in range(calibration):
            store.add(_episode(rng, f"calibration:{i}"), "calibration")
    return path


# --- policy artifacts ----------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "edit"), [
    ("kappa", lambda m: m | {"kappa": math.nan}),
    ("kappa", lambda m: m | {"kappa": math.inf}),
    ("kappa", lambda m: m | {"format_version": 2, "scale": "probability", "kappa": 7}),  # a v2 probability κ
    ("kappa", lambda m: m | {"format_version": 2, "scale": "probability", "kappa": -5}),
    ("kappa", lambda m: m | {"kappa": True}),
    ("alpha", lambda m: m | {"alpha": 0}),
    ("alpha", lambda m: m | {"alpha": 5}),
    ("std", lambda m: m["normalization"].update(std=["1.0"] * N)),
    ("std", lambda m: m["normalization"].update(std=[0.0] * N)),
    ("std", lambda m: m["normalization"].update(std=[math.inf] * N)),
    ("mean", lambda m: m["normalization"].update(mean=[math.nan] * N)),
    ("one value per feature", lambda m: m["normalization"].update(mean=[0.0])),
    ("hidden", lambda m: m["network"].update(hidden=-1)),
    ("layers", lambda m: m["network"].update(layers=0)),
    ("dictionary", lambda m: [m]),
])
def test_out_of_range_manifests_are_refused_naming_the_field(tmp_path, field, edit):
    _artifact().save(tmp_path)
    _edit_manifest(tmp_path, edit)
    with pytest.raises(PolicyFileError, match=field):
        PolicyGate.from_path(tmp_path)


def test_an_unreadable_manifest_names_the_file(tmp_path, monkeypatch):
    _artifact().save(tmp_path)
    manifest = tmp_path / "policy.json"
    if os.geteuid() == 0:  # root reads any file: make the read fail as it does for a user
        def denied(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(self))
        monkeypatch.setattr(Path, "read_text", denied)
    else:
        manifest.chmod(0)
    with pytest.raises(PolicyFileError, match=r"policy\.json.*Permission denied"):
        PolicyArtifact.load(tmp_path)


def test_non_finite_weights_with_a_matching_checksum_are_refused(tmp_path):
    artifact = _artifact()
    artifact.save(tmp_path)
    from safetensors.torch import save_file

    weights = {k: torch.full_like(v, math.nan) for k, v in artifact.network.state_dict().items()}
    save_file(weights, str(tmp_path / "policy.safetensors"), metadata={"format": "stepgraph.policy"})
    checksum = hashlib.sha256((tmp_path / "policy.safetensors").read_bytes()).hexdigest()
    _edit_manifest(tmp_path, lambda m: m | {"weights_sha256": checksum})
    with pytest.raises(PolicyFileError, match="not finite"):
        PolicyArtifact.load(tmp_path)


def test_save_refuses_an_artifact_that_would_not_load_and_writes_nothing(tmp_path):
    with pytest.raises(PolicyFileError, match="kappa"):
        _artifact(kappa=math.nan).save(tmp_path / "a")
    artifact = _artifact()
    with torch.no_grad():
        artifact.network.net[0].weight[0, 0] = math.inf
    with pytest.raises(PolicyFileError, match="not finite"):
        artifact.save(tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("directory", [DEFAULT_POLICY_DIR, LOGITS_ONLY_POLICY_DIR, API_ONLY_POLICY_DIR])
def test_shipped_artifacts_still_load(directory):
    artifact = PolicyArtifact.load(directory)
    assert math.isfinite(artifact.kappa) and artifact.schema == FEATURE_SCHEMA_V2  # trained before v3: still loads


def test_train_refuses_a_nan_kappa_and_writes_nothing(tmp_path, capsys):
    store, out = _store(tmp_path / "t.sqlite"), tmp_path / "policy"
    argv = ["train", "--store", str(store), "--out", str(out), "--steps", "0", "--kappa-init", "nan", "--calibration-split", ""]
    assert main(argv) == 2
    assert "--kappa-init" in capsys.readouterr().err and not out.exists()


# --- non-finite scores and features ------------------------------------------------------------


class FixedScoreGate(Gate):
    name, threshold = "fixed", 0.5

    def __init__(self, score: float) -> None:
        self.value = score

    def score(self, x: GateInput) -> float:
        return self.value


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_a_non_finite_score_escalates_and_says_why(score):
    decision = FixedScoreGate(score).decide(GateInput("q", (), STEP, _observation()))
    assert decision.escalate and decision.mu_escalate == 1.0 and decision.reason == "non-finite score"


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_features_escalate_every_gate(tmp_path, value):
    x = GateInput("q", (), STEP, _observation(logit_confidence=value))
    _artifact(kappa=1.0).save(tmp_path)  # κ = 1: never escalates on a finite input
    for gate in (ConfidenceThresholdGate(16.0), PolicyGate.from_path(tmp_path), FixedScoreGate(0.0)):
        decision = gate.decide(x)
        assert decision.escalate and "non-finite features: logit_confidence" in decision.reason


def test_baselines_that_ignore_features_keep_their_behaviour():
    x = GateInput("q", (), STEP, _observation(logit_confidence=math.inf))
    assert not AlwaysDraftGate().decide(x).escalate and RandomGate(0.0, seed=0).decide(x).reason is None


def test_exploring_never_accepts_a_forced_escalation():
    x = GateInput("q", (), STEP, _observation(logit_confidence=math.inf))
    gate = ExploringGate(ConfidenceThresholdGate(16.0), epsilon=1.0, seed=0)
    decisions = [gate.decide(x) for _ in range(50)]
    assert all(d.escalate and d.mu_escalate == 1.0 for d in decisions)


def test_infinite_max_logits_escalate_in_the_graph_and_the_step_records_why():
    draft = ScriptedModel("small", 1_000, ["1+1=2", "\\boxed{2}"], math.inf)
    target = ScriptedModel("large", 8_000, ["1+1=2", "\\boxed{2}"], 20.0)
    result = build_graph([draft, target], ConfidenceThresholdGate(16.0)).invoke({"question": "What is 1+1?"})
    assert result["steps"] and all(s["escalated"] for s in result["steps"])
    assert all(s["gate_reason"] == "non-finite features: logit_confidence" for s in result["steps"])


def test_an_ordinary_decision_has_no_reason():
    assert ConfidenceThresholdGate(16.0).decide(GateInput("q", (), STEP, _observation())).reason is None


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "allowed"), [
    ("batch_size", 0, ">= 1"), ("delta", -1.0, "> 0"), ("alpha", 5.0, "in (0, 1)"), ("hidden", 0, "in [1, 4096]"),
    ("steps", -5, ">= 0"), ("eta", math.nan, ">= 0"), ("rho_bar", math.inf, "> 0"), ("kappa_init", 2.0, "in [0, 1]"),
    ("gamma", 1.5, "in [0, 1]"), ("layers", 2.5, "an integer"), ("critic_lr", True, "a finite number"),
])
def test_cpo_args_are_validated_at_construction(option, value, allowed):
    with pytest.raises(ConfigError, match=rf"--{option.replace('_', '-')}.*{re.escape(allowed)}"):
        CPOArgs(**{option: value})


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--delta", "-1"], ["--alpha", "5"], ["--hidden", "0"],
                                    ["--steps", "-5"]])
def test_bad_train_options_exit_2_and_write_nothing(tmp_path, capsys, option):
    out = tmp_path / "policy"
    assert main(["train", "--store", str(_store(tmp_path / "t.sqlite")), "--out", str(out), *option]) == 2
    assert capsys.readouterr().err.startswith(f"stepgraph: error: CPOArgs.{option[0][2:].replace('-', '_')}")
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["collect", "--problems", "0"], ["collect", "--epsilon", "2"], ["collect", "--threshold", "nan"],
    ["collect", "--concurrency", "0"], ["collect", "--temperature", "-1"], ["evaluate", "--problems", "-3"],
    ["bench", "--alpha", "5"], ["bench", "--calibration-problems", "0"], ["bench", "--output-price", "inf"],
    ["throughput", "--batch", "0"], ["overhead", "--problems", "0"],
])
def test_bad_offline_options_are_one_line_errors_naming_the_option(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])  # a bad value stops parsing before --help; an accepted one would print help (exit 0)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[1]}: must be" in err or f"argument {argv[1]}/" in err


# --- the trace store -------------------------------------------------------------------------------


def test_rows_are_inserted_by_column_name(tmp_path):
    path = tmp_path / "t.sqlite"
    TraceStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE episodes ADD COLUMN note TEXT")
    with TraceStore(path) as store:
        store.add(_episode(random.Random(0), "p0"), "train")
        assert store.problem_ids() == {"p0"}


def test_a_store_missing_columns_is_refused_before_collecting(tmp_path):
    path = tmp_path / "t.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE episodes (problem_id TEXT PRIMARY KEY, data TEXT)")
    with pytest.raises(TraceStoreError, match="lacks columns"):
        TraceStore(path)


def test_a_renamed_feature_is_refused_naming_both_schemas(tmp_path, capsys):
    path = _store(tmp_path / "t.sqlite")
    renamed = CONFIDENCE_SCHEMA.to_dict() | {"names": ["max_logit", *CONFIDENCE_SCHEMA.names[1:]]}
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'feature_schema'", (json.dumps(renamed),))
    with pytest.raises(TraceStoreError, match="max_logit.*logit_confidence"):
        TraceStore(path, readonly=True)
    assert main(["train", "--store", str(path), "--out", str(tmp_path / "p"), "--steps", "1"]) == 2
    assert "feature schema" in capsys.readouterr().err


def test_a_schema_version_stored_as_text_is_read(tmp_path):
    path = tmp_path / "t.sqlite"
    TraceStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("""UPDATE meta SET value = '"1"' WHERE key = 'schema_version'""")
    TraceStore(path).close()


def test_a_foreign_database_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "app.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ann')")
    before = path.read_bytes()
    with pytest.raises(TraceStoreError, match="another program's"):
        TraceStore(path)
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["users"]


def test_a_read_only_store_opens_for_reading_and_refuses_writes(tmp_path):
    path = _store(tmp_path / "t.sqlite")
    with TraceStore(path, readonly=True) as store:
        assert len(list(store.episodes("train"))) == 8
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.set_meta("x", 1)


def test_train_reads_a_store_on_read_only_files():
    """As a user who may not write the store or its directory (root drops its override of file modes)."""
    as_user = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: file modes cannot be enforced")
        as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    directory, out = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    try:
        path = _store(directory / "t.sqlite")
        with sqlite3.connect(path) as db:  # a finished store: no -wal / -shm beside it
            db.execute("PRAGMA journal_mode=DELETE")
        path.chmod(0o444)
        directory.chmod(0o555)
        command = [*as_user, sys.executable, "-m", "stepgraph", "train", "--store", str(path), "--out", str(out / "p"),
                   "--steps", "2", "--calibration-split", ""]
        result = subprocess.run(command, check=False, capture_output=True, text=True, env=ENV, timeout=300)
        assert result.returncode == 0, result.stderr
        assert PolicyArtifact.load(out / "p").guarantee["type"] == "none"
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)
        shutil.rmtree(out)


def test_claims_keep_two_collectors_off_the_same_problem(tmp_path):
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as first, TraceStore(path) as second:
        assert first.claim("p0") and not second.claim("p0")
        first.add(_episode(random.Random(0), "p0"), "train")
        assert not second.claim("p0")  # finished: nobody runs it again
        with sqlite3.connect(path) as db:  # a claim by a collector that died
            db.execute("INSERT INTO claims VALUES ('p1', ?, ?)", (f"{os.uname().nodename}:999999999:dead", 0.0))
            db.execute("INSERT INTO claims VALUES ('p2', 'other-host:1:x', 0.0)")  # expired long ago
        assert second.claim("p1") and second.claim("p2")
        assert first.claim("p3") and not second.claim("p3")
        first.release()  # a collector that stops, finished or failed, lets go of its leases at once
        assert second.claim("p3") and not first.claim("p1")


@pytest.mark.slow  # two processes, each loading the shipped models (the claims themselves: the test above)
def test_two_collector_processes_share_the_problems(tmp_path):
    store = tmp_path / "traces.sqlite"
    TraceStore(store).close()  # both processes then only open it
    command = [sys.executable, "-m", "stepgraph", "collect", "--store", str(store), "--problems", "6"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
                 for _ in range(2)]
    reports = [json.loads(p.communicate(timeout=500)[0]) for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert sum(r["collected"] for r in reports) == 6  # each problem run exactly once
    with TraceStore(store, readonly=True) as s:
        assert len(s) == 6


# --- the coverage guarantee ------------------------------------------------------------------------


def test_too_few_calibration_episodes_claim_no_guarantee():
    assert episodes_needed(0.02) == 49
    assert calibration_guarantee(0.02, 30) | {"reason": ""} == {
        "type": "none", "reason": "", "calibration_episodes": 30, "calibration_episodes_needed": 49}
    assert calibration_guarantee(0.02, 49)["type"] == "split-conformal"
    assert calibration_guarantee(0.02, 99, misses=1)["type"] == "split-conformal"  # ⌊0.02·100⌋ − 1 = 1 allowed
    assert calibration_guarantee(0.02, 99, misses=2)["type"] == "none"


def test_the_pac_bound_allows_the_misses_a_binomial_exceeds_with_probability_at_most_delta():
    # Checked against numpy's binomial sampler, not the formula: a router whose true miss rate is exactly α shows at
    # most k misses in at most a δ share of calibration sets, and at most k + 1 in more than that.
    draws = np.random.default_rng(0).binomial(400, 0.02, size=200_000)
    k = allowed_misses(0.02, 400, delta=0.1)
    assert k == 4 and allowed_misses(0.02, 400) == 7
    assert (draws <= k).mean() <= 0.1 + 0.003 and (draws <= k + 1).mean() > 0.1
    assert episodes_needed(0.02, 0.1) == 114 and allowed_misses(0.02, 113, 0.1) == -1  # 0.98^114 ≤ 0.1 < 0.98^113
    assert calibration_guarantee(0.02, 400, misses=4, delta=0.1) == {
        "type": "pac", "coverage": 0.98, "confidence": 0.9, "calibration_episodes": 400}
    assert calibration_guarantee(0.02, 400, misses=5, delta=0.1)["type"] == "none"


@pytest.mark.parametrize(("n", "alpha"), [(1600, 0.02), (1600, 0.3), (5000, 0.02)])
def test_the_pac_bound_holds_for_as_many_runs_as_the_shipped_calibration(n, alpha):
    # C(1600, 450) overflows a float: `calibrate --runs 1600 --delta 0.1` crashed after its 20-minute sweep, on the
    # curve's α = 0.3.
    draws = np.random.default_rng(1).binomial(n, alpha, size=200_000)
    k = allowed_misses(alpha, n, delta=0.1)
    assert 0 < k < allowed_misses(alpha, n)
    assert (draws <= k).mean() <= 0.1 + 0.003 and (draws <= k + 1).mean() > 0.1


@pytest.mark.parametrize("calibration", [0, 30])
def test_train_warns_and_records_no_guarantee_instead_of_kappa_zero(tmp_path, capsys, calibration):
    store, out = _store(tmp_path / "t.sqlite", calibration=calibration), tmp_path / "policy"
    assert main(["train", "--store", str(store), "--out", str(out), "--steps", "3"]) == 0
    captured = capsys.readouterr()
    assert "no coverage guarantee" in captured.err and "49" in captured.err
    artifact = PolicyArtifact.load(out)
    assert artifact.guarantee["type"] == "none" and artifact.guarantee["calibration_episodes_needed"] == 49
    online = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["charts/kappa"]
    # the online κ (a probability) as its log-odds, not κ = 0
    assert artifact.kappa == kappa_from_probability(online) and "calibrated_kappa" not in artifact.training
    assert json.loads(captured.out)["guarantee"] == "none"


@pytest.mark.parametrize("generator", ["task", "wordproblems"])
def test_an_unknown_split_is_refused_not_drawn_forever(generator):
    import importlib

    module = importlib.import_module(f"stepgraph.testbed.{generator}")
    with pytest.raises(ConfigError, match="Unknown split 'bogus'"):
        module.generate("bogus", 2)


def test_the_cli_names_an_unknown_split_instead_of_a_traceback(tmp_path, capsys):
    assert main(["evaluate", "--splits", "bogus", "--problems", "2", "--policy", str(DEFAULT_POLICY_DIR)]) == 2
    assert "Unknown split 'bogus'" in capsys.readouterr().err


def test_signals_on_a_store_without_the_eval_split_names_the_split_instead_of_a_shape_error(tmp_path, capsys):
    store = _store(tmp_path / "t.sqlite", train=8)
    assert main(["signals", "--store", str(store)]) != 0
    err = capsys.readouterr().err
    assert "no 'calibration' episodes" in err and "--eval" in err and "Traceback" not in err
    store = _store(tmp_path / "u.sqlite", train=8, calibration=6)
    assert main(["signals", "--store", str(store)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["steps"] > 0 and "all of v3 (+ unused question numbers)" in {r.get("signal") for r in rows}
