"""calibrate: the replayed surrogate, the conformal bound, too few episodes, tier checks; rollout vs exact verifier."""

import json
import random
import warnings

import pytest
import torch
from stepgraph.training.calibration.calibrate import (
    Replay,
    check_tiers,
    episode_miss,
    min_episodes,
    replay_inputs,
    threshold_family,
)
from stepgraph.training.collection.verifiers import RolloutVerifier, TestbedVerifier
from stepgraph.training.data.records import Episode, StepRecord
from stepgraph.training.learning import cpo

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork
from stepgraph.errors import ConfigError, PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.testbed import load_pair
from stepgraph.testbed import testbed_task as shipped_task


def _episode(rng: random.Random, i: int) -> Episode:
    """Low-confidence drafts are wrong and their escalation right; high-confidence drafts are right."""
    steps, all_ok = [], True
    for t in range(rng.randint(2, 4)):
        low = rng.random() < 0.3
        action = int(rng.random() < 0.5)
        all_ok &= (not low) or bool(action)
        obs = {n: None for n in CONFIDENCE_SCHEMA.names}
        obs.update(api_confidence=rng.uniform(0.1, 0.5) if low else rng.uniform(0.6, 1.0), step_index=float(t))
        steps.append(StepRecord(t, obs, action, 0.5, "d", "e", not low, rng.random() < 0.97, 1.0, 4.0, 1.0 + 4.0 * action))
    return Episode(f"p{i}", "q", "1", steps, reward=int(all_ok), target_reward=int(rng.random() < 0.9), target_flops=4.0 * len(steps))


def test_replayed_miss_is_cpos_surrogate():
    rng = random.Random(0)
    episodes = [_episode(rng, i) for i in range(60)]
    schema = CONFIDENCE_SCHEMA
    artifact = PolicyArtifact(PolicyNetwork(len(schema.names)), 0.5, 0.1, schema, [0.0] * len(schema.names), [1.0] * len(schema.names))
    data = cpo.to_tensors(episodes, artifact, 1.0)
    for e, episode in enumerate(episodes):
        choice = [rng.randint(0, 1) for _ in episode.steps]
        assert episode_miss(episode, choice) == cpo.episode_miss(data, e, torch.tensor(choice))


def test_calibration_meets_the_bound_cheapest_first_and_matches_the_gate():
    rng = random.Random(1)
    episodes = [_episode(rng, i) for i in range(200)]
    replay = Replay(threshold_family("api_confidence"), episodes)
    strict, loose = replay.calibrate(0.02), replay.calibrate(0.3)
    assert strict.misses <= strict.allowed == 3 and loose.misses <= loose.allowed
    assert loose.threshold <= strict.threshold and loose.mean_flops <= strict.mean_flops  # a looser α costs less
    # the cheapest: one candidate cheaper would break the bound
    cheaper = [c for c in replay.candidates if c < strict.threshold]
    assert not cheaper or replay.evaluate(max(cheaper), 0.02).misses > strict.allowed
    gate = replay.family.make(strict.threshold)  # the written gate decides as the replay did
    for episode, scores in zip(episodes, replay.scores):
        for x, s in zip(replay_inputs(episode), scores):
            assert gate.decide(x).escalate == replay.family.escalates(s, strict.threshold)
    curve = replay.curve([0.001, 0.02, 0.3])
    assert curve[0] == {"alpha": 0.001, "needs_episodes": 999} and curve[1]["threshold"] == strict.threshold


def test_too_few_episodes_says_how_many_are_needed():
    rng = random.Random(2)
    replay = Replay(threshold_family("api_confidence"), [_episode(rng, i) for i in range(30)])
    assert min_episodes(0.02) == 49 and min_episodes(0.1) == 9
    with pytest.raises(ConfigError, match=r"30 calibration episodes cannot certify α = 0.02.*n ≥ 49"):
        replay.calibrate(0.02)


def test_an_artifact_over_other_tiers_is_refused_or_warned_naming_both():
    trained = [{"name": "draft", "parameters": 156352}, {"name": "target", "parameters": 1100416}]
    other = [{"name": "qwen-1.5b", "parameters": 1_543_714_304}, {"name": "qwen-7b", "parameters": 7_615_616_512}]
    with pytest.raises(PolicyFileError) as err:
        check_tiers(trained, other, "runs/policy")
    assert "draft" in str(err.value) and "qwen-7b" in str(err.value) and "--allow-other-tiers" in str(err.value)
    with pytest.warns(RuntimeWarning, match="qwen-1.5b"):
        check_tiers(trained, other, "runs/policy", allow_other_tiers=True)
    with pytest.warns(RuntimeWarning, match="served"):  # same sizes, other names: a warning only
        check_tiers(trained, [{"name": "served", "parameters": 156352}, trained[1]], "runs/policy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_tiers(trained, trained, "runs/policy")
        check_tiers(None, other, "old artifact")  # nothing recorded: nothing to compare


def test_rollout_verifier_agrees_with_the_exact_verifier(capsys):
    draft, target = load_pair()
    problems = shipped_task().generate("test", 12, seed=7)
    exact = TestbedVerifier(problems)
    rollout = RolloutVerifier(target, k=2, m=1, max_steps=8, seed=0)
    agree = total = 0
    for i, p in enumerate(problems):
        prior: list[str] = []
        for index in range(4):
            step = draft.generate_step(p.question, prior, temperature=0.7, seed=100 * i + index).text
            truth = exact.verify(p.question, str(p.answer), prior, step)
            agree += rollout.verify(p.question, str(p.answer), prior, step) == truth
            total += 1
            prior.append(step)
            if "\\boxed{" in step:
                break
    rate = agree / total
    with capsys.disabled():
        print(f"\nrollout vs exact verifier agreement: {agree}/{total} = {rate:.3f}")
    assert total >= 20 and rate >= 0.8


def test_the_gate_artifact_records_tiers_and_curve(tmp_path):
    from stepgraph.training.calibration.calibrate import load_gate_artifact, save_gate

    tiers = load_pair()
    recorded = [{"name": t.name, "parameters": t.n_params, "backend": "transformers"} for t in tiers]
    save_gate(tmp_path, "threshold", {"threshold": 0.7, "feature": "api_confidence"}, tiers=recorded, calibration={"alpha": 0.1})
    gate = load_gate_artifact(tmp_path, tiers)
    assert (gate.confidence_threshold, gate.feature) == (0.7, "api_confidence")
    assert json.loads((tmp_path / "gate.json").read_text())["tiers"][1]["parameters"] == tiers[1].n_params
    recorded[1]["parameters"] += 1
    save_gate(tmp_path, "threshold", {"threshold": 0.7, "feature": "api_confidence"}, tiers=recorded, calibration={})
    with pytest.raises(PolicyFileError, match="target"):
        load_gate_artifact(tmp_path, tiers)


@pytest.mark.parametrize("gate", ["threshold", "steer", "prm"])
def test_calibrate_cli_writes_a_loadable_gate_for_any_score_gate(tmp_path, capsys, gate):
    from stepgraph.training.calibration.calibrate import load_gate_artifact
    from stepgraph.training.data.store import TraceStore

    from stepgraph.cli import main

    rng = random.Random(3)
    with TraceStore(tmp_path / "traces.sqlite") as store:
        store.set_meta("models", [{"name": "small", "parameters": 10}, {"name": "big", "parameters": 100}])
        for i in range(120):
            episode = _episode(rng, i)
            for step in episode.steps:  # STEER reads the raw-logit confidence
                step.observation["logit_confidence"] = 20.0 * step.observation["api_confidence"]
            store.add(episode, "train" if i < 60 else "calibration")
    argv = ["calibrate", "--store", str(tmp_path / "traces.sqlite"), "--gate", gate, "--alpha", "0.1", "--out", str(tmp_path / gate)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 60 and out["met"] and out["misses"] <= out["allowed"] == 5
    assert [row["alpha"] for row in out["curve"]] == [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3]

    class Tier:
        def __init__(self, name, n_params):
            self.name, self.n_params = name, n_params

    loaded = load_gate_artifact(tmp_path / gate, [Tier("small", 10), Tier("big", 100)])
    assert type(loaded).__name__ == {"threshold": "ConfidenceThresholdGate", "steer": "StepwiseGMMGate", "prm": "ProcessRewardGate"}[gate]
    assert {"threshold": lambda g: g.confidence_threshold, "steer": lambda g: g.threshold,
            "prm": lambda g: g.accept_threshold}[gate](loaded) == out["threshold"]
    with pytest.raises(PolicyFileError, match="small"):
        load_gate_artifact(tmp_path / gate, [Tier("small", 11), Tier("big", 100)])


def test_when_no_threshold_meets_alpha_the_gate_escalates_everything():
    rng = random.Random(4)
    episodes = [_episode(rng, i) for i in range(40)]
    for e in episodes:  # unreachable: every draft and every escalation fails verification, the target alone succeeds
        e.target_reward, e.reward = 1, 0
        for s in e.steps:
            s.draft_correct = s.escalated_correct = False
    replay = Replay(threshold_family("api_confidence"), episodes)
    result = replay.calibrate(0.1)
    assert result.misses > result.allowed and result.escalation_rate == 1.0


def test_a_corrupted_reward_model_file_is_refused_naming_it(tmp_path):
    from stepgraph.training.collection.prm import StepRewardModel

    path = tmp_path / "prm.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(PolicyFileError, match="prm.safetensors"):
        StepRewardModel.load(path)
