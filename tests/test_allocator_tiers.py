"""The ex-ante allocator on K-tier traces: labels, the replay's cost, calibration, the CLI and the artifact's tiers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from stepgraph.training.calibration.guarantee import allowed_misses
from stepgraph.training.data.records import Episode
from stepgraph.training.data.store import TraceStore
from stepgraph.training.learning.allocator import train_allocator
from stepgraph.training.learning.allocator_tiers import (
    calibrate_tier_allocator,
    replay,
    replay_allocator,
    step_costs,
    tier_data,
)
from stepgraph.training.learning.cpo import CPOArgs
from test_cpo_tiers import FLOPS, TIERS, step

from stepgraph.artifacts.policy import (
    PolicyArtifact,
    PolicyNetwork,
    kappa_from_probability,
)
from stepgraph.errors import ConfigError, PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.routing.allocator import ALLOCATOR_SCHEMA, AllocatorInput, allocator_observation
from stepgraph.routing.gates import ConfidenceThresholdGate, PolicyGate
from stepgraph.routing.gates import PolicyGate as TierPolicyGate
from stepgraph.routing.learned_allocator import AllocatorArtifact, AllocatorNetwork, LearnedAllocator

N = len(ALLOCATOR_SCHEMA.names)


def question(difficulty: float) -> str:
    """The question tells the difficulty: 1, 2 or 3 digits for easy, medium and hard."""
    return f"Bo has {'5' * (1 + int(2 * difficulty))} coins. He gets 3 more."


def tier_episodes(n: int, seed: int, noise: float = 0.0) -> list[Episode]:
    """Episodes whose steps all have the question's difficulty (``test_cpo_tiers.step``: easy steps verified on
    every tier, medium from the mid tier up, hard only on the large tier); ``noise``: share of easy questions whose
    steps are in fact medium."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        difficulty = rng.choice([0.0, 0.5, 1.0])
        actual = 0.5 if difficulty == 0.0 and rng.random() < noise else difficulty
        steps = [step(t, actual, action=1) for t in range(3)]
        out.append(Episode(f"p{seed}:{i}", question(difficulty), "1", steps, reward=1, target_reward=1, target_flops=30.0))
    return out


def blank_allocator(k: int = 3) -> AllocatorArtifact:
    return AllocatorArtifact(AllocatorNetwork(N, k, 8, 2), 0.5, 0.1, TIERS[:k], [0.0] * N, [1.0] * N, 8, 2)


def escalating_policy() -> PolicyArtifact:
    """A 3-tier policy that sends every step it judges to the next tier up: with zero weights π is uniform over
    the tiers ≥ k, so 1 − π(k | o, k) ≥ 0.5 > κ, and the first of the tied tiers above is the next one."""
    n = len(CONFIDENCE_SCHEMA.names)
    network = PolicyNetwork(n, 8, 2, 3, tier_input=True)
    with torch.no_grad():
        for p in network.parameters():
            p.zero_()
    return PolicyArtifact(network, kappa_from_probability(0.4), 0.1, CONFIDENCE_SCHEMA, [0.0] * n, [1.0] * n, 8, 2, TIERS)


def test_labels_are_the_cheapest_verified_tier_of_each_step() -> None:
    episodes = [Episode("e", question(0), "1", [step(0, 0.0), step(1, 0.5), step(2, 1.0)], 1, 1, 30.0)]
    assert tier_data(episodes, blank_allocator(), [0, 1, 2]).labels.tolist() == [0, 1, 2]
    assert tier_data(episodes, blank_allocator(2), [0, 2]).labels.tolist() == [0, 1, 1]  # over small → large only


def test_a_step_sent_up_pays_only_its_tier_and_the_post_hoc_policy_walks_on_from_there() -> None:
    episodes = [Episode("e", question(0), "1", [step(0, 0.0), step(1, 1.0)], 1, 1, 20.0)]
    alone = tier_data(episodes, blank_allocator(), [0, 1, 2])
    straight_up = replay(alone, 0, [2, 2])
    assert straight_up.kept == [2, 2] and straight_up.flops == 2 * FLOPS[2]  # no draft paid
    mixed = replay(alone, 0, [0, 1])
    assert mixed.kept == [0, 1] and mixed.flops == FLOPS[0] + FLOPS[1]
    assert step_costs(alone.tables, mixed, range(2)) == [FLOPS[0], FLOPS[1]]
    combined = tier_data(episodes, blank_allocator(), [0, 1, 2], escalating_policy())
    walked = replay(combined, 0, [1, 0])  # the policy sends tier 1's step to 2, and the draft to 1, then 2
    assert walked.kept == [2, 2] and walked.flops == (FLOPS[1] + FLOPS[2]) + sum(FLOPS)
    assert step_costs(combined.tables, walked, range(2)) == [FLOPS[1] + FLOPS[2], sum(FLOPS)]


def test_training_routes_each_question_to_its_cheapest_tier_and_calibration_meets_its_bound() -> None:
    alpha = 0.1
    args = CPOArgs(alpha=alpha, steps=5, batch_size=8, hidden=16, seed=0)
    artifact = train_allocator(tier_episodes(150, 0, noise=0.1), args, tiers=TIERS, calibration=tier_episodes(150, 1, noise=0.1))
    training = artifact.training
    assert artifact.tiers == TIERS and training["columns"] == [0, 1, 2]
    assert artifact.guarantee is not None and artifact.guarantee["type"] == "split-conformal"
    assert training["calibration_surrogate_miss"] * 150 <= allowed_misses(alpha, 150)
    assert training["calibration_flops_vs_target"] < 0.7  # cheaper than the large tier on every step
    allocator = LearnedAllocator(artifact)
    tiers = [allocator.allocate(AllocatorInput(question(d), (), allocator_observation(question(d), []), 0, 3)).tier
             for d in (0.0, 0.5, 1.0)]
    assert tiers == [0, 1, 2]
    # Held out again: the calibrated κ's miss rate on fresh episodes stays near α.
    fresh = tier_data(tier_episodes(300, 2, noise=0.1), artifact, [0, 1, 2])
    with torch.no_grad():
        probs = torch.softmax(artifact.network(fresh.x), dim=-1)
    kappa = training["calibration_by_stage"][training["selected_stage"]]["kappa"]  # the replays' scale: a probability
    assert artifact.kappa == kappa_from_probability(kappa)
    assert replay_allocator(fresh, probs, kappa)["misses"] / 300 <= 2 * alpha


def test_calibration_takes_the_largest_kappa_within_the_bound() -> None:
    torch.manual_seed(0)
    data = tier_data(tier_episodes(60, 3), blank_allocator(), [0, 1, 2])
    network = AllocatorNetwork(N, 3, 8, 2)
    chosen = calibrate_tier_allocator(data, network, 0.1)
    assert chosen["met"] and chosen["misses"] <= allowed_misses(0.1, 60)
    with torch.no_grad():
        probs = torch.softmax(network(data.x), dim=-1)
    tails = probs.flip(-1).cumsum(-1).flip(-1)[:, 1:].reshape(-1)
    larger = [float(t) for t in tails if float(t) > chosen["kappa"]] + [1.0 + 1e-9]
    assert all(replay_allocator(data, probs, k)["misses"] > allowed_misses(0.1, 60) for k in larger)


def test_a_post_hoc_gate_must_be_a_tier_policy_over_the_same_tiers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="K-tier policy"):
        train_allocator(tier_episodes(5, 0), CPOArgs(steps=0), tiers=TIERS, gate=ConfidenceThresholdGate(0.5))
    n = len(CONFIDENCE_SCHEMA.names)
    two = PolicyArtifact(PolicyNetwork(n, 8, 2, 2, tier_input=True), 0.0, 0.1, CONFIDENCE_SCHEMA, [0.0] * n, [1.0] * n, 8, 2,
                         [TIERS[0], TIERS[2]]).save(tmp_path / "p2")
    with pytest.raises(ConfigError, match="same tiers"):
        train_allocator(tier_episodes(5, 0), CPOArgs(steps=0), tiers=TIERS, gate=PolicyGate.from_path(two))
    combined = train_allocator(tier_episodes(20, 0), CPOArgs(steps=2, batch_size=4, hidden=8), tiers=TIERS, columns=[0, 2],
                               gate=PolicyGate.from_path(two), calibration=tier_episodes(20, 1))
    assert combined.tiers == [TIERS[0], TIERS[2]] and combined.training["combined_with_policy"]


def test_columns_are_refused_on_2_tier_traces() -> None:
    plain = tier_episodes(3, 0)
    for e in plain:
        for s in e.steps:
            s.tiers = None
    with pytest.raises(ConfigError, match="record_tiers"):
        train_allocator(plain, CPOArgs(steps=0), tiers=TIERS[:2], columns=[0, 1])


def _store(path: Path, episodes: list[Episode], calibration: list[Episode], tiers: list[dict]) -> Path:
    with TraceStore(path) as store:
        store.set_meta("models", tiers)
        for e in episodes:
            store.add(e, "train")
        for e in calibration:
            store.add(e, "calibration")
    return path


def test_cli_trains_over_every_recorded_tier_or_the_chosen_columns(tmp_path: Path, capsys) -> None:
    from stepgraph.cli import main

    store = _store(tmp_path / "traces.sqlite", tier_episodes(30, 0), tier_episodes(30, 1), TIERS)
    out = tmp_path / "allocator"
    assert main(["train", "--allocator", "--store", str(store), "--out", str(out), "--steps", "2", "--alpha", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["guarantee"] == "split-conformal"
    assert json.loads((out / "allocator.json").read_text())["training"]["columns"] == [0, 1, 2]
    assert LearnedAllocator.from_path(out, TIERS).artifact.network.n_tiers == 3
    with pytest.raises(PolicyFileError, match="other sizes or another number"):
        LearnedAllocator.from_path(out, [TIERS[0], TIERS[2]])
    with pytest.raises(PolicyFileError, match="trained for 3 tiers"):
        LearnedAllocator.from_path(out).allocate(AllocatorInput("q", (), allocator_observation("q", []), 0, 2))

    pair = tmp_path / "pair"
    assert main(["train", "--allocator", "--store", str(store), "--out", str(pair), "--steps", "0", "--alpha", "0.1",
                 "--allocator-columns", "0", "2"]) == 0
    capsys.readouterr()
    assert LearnedAllocator.from_path(pair, [TIERS[0], TIERS[2]]).artifact.tiers == [TIERS[0], TIERS[2]]
    with pytest.raises(PolicyFileError, match="other sizes or another number"):
        LearnedAllocator.from_path(pair, TIERS)

    for bad in (["2", "0"], ["0", "3"], ["1"]):
        assert main(["train", "--allocator", "--store", str(store), "--out", str(tmp_path / "bad"), "--steps", "0",
                     "--allocator-columns", *bad]) == 2
        assert "--allocator-columns must name at least two of the 3 recorded tiers (0 to 2)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_refuses_columns_for_a_2_tier_store(tmp_path: Path, capsys) -> None:
    from stepgraph.cli import main

    plain = tier_episodes(4, 0)
    for e in plain:
        for s in e.steps:
            s.tiers = None
    store = _store(tmp_path / "traces.sqlite", plain, [], TIERS[:2])
    assert main(["train", "--allocator", "--store", str(store), "--out", str(tmp_path / "a"), "--steps", "0",
                 "--calibration-split", "", "--allocator-columns", "0", "1"]) == 2
    assert "--allocator-columns needs traces with every tier's step" in capsys.readouterr().err


def test_bench_trains_both_3_tier_allocators_and_reuses_them(tmp_path: Path, monkeypatch) -> None:
    from stepgraph.training.bench.bench_tiers import TierBenchArgs, tier_allocator_routers, train_tier_allocators
    from stepgraph.training.learning import allocator as allocator_module
    from test_bench_tiers import policy, tiers

    models = tiers()
    described = [{"name": m.name, "parameters": m.n_params} for m in models]
    policies = {"policy-3-tier": policy(tmp_path / "p3", models)}
    args = TierBenchArgs(out=tmp_path, alpha=0.1, allocator_cpo={"steps": 1, "batch_size": 4, "hidden": 8})
    with TraceStore(tmp_path / "traces.sqlite") as store:
        store.set_meta("models", described)
        for e in tier_episodes(20, 0):
            store.add(e, "train")
        for e in tier_episodes(20, 1):
            store.add(e, "calibration")
        paths = train_tier_allocators(store, args, policies)
        assert set(paths) == {"allocator-3-tier", "allocator+policy-3-tier"}
        monkeypatch.setattr(allocator_module, "train_allocator", lambda *a, **k: pytest.fail("trained alike: reuse it"))
        assert train_tier_allocators(store, args, policies) == paths
    manifest = json.loads((paths["allocator+policy-3-tier"] / "allocator.json").read_text())
    assert manifest["training"]["combined_with_policy"] and not json.loads(
        (paths["allocator-3-tier"] / "allocator.json").read_text())["training"]["combined_with_policy"]
    routers = tier_allocator_routers(models, paths, policies)
    assert routers["allocator-3-tier"][0] == (0, 1, 2) and isinstance(routers["allocator+policy-3-tier"][1], TierPolicyGate)

