"""The K-tier CPO: shapes of the replay tensors, the surrogate miss, and a tiny problem whose right tier is learnable."""

from __future__ import annotations

import random

import pytest
import torch
from stepgraph.training.data.records import Episode, StepRecord
from stepgraph.training.learning.cpo_tiers import (
    MissingTierTableError,
    TierCPOArgs,
    calibrate_tier_kappa,
    cheapest_accepted,
    gate_chooser,
    replay_batch,
    to_tier_tensors,
    train_tier_policy,
    walk,
    walk_miss,
)

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork
from stepgraph.errors import ConfigError
from stepgraph.features import CONFIDENCE_SCHEMA

TIERS = [{"name": "small", "parameters": 1}, {"name": "mid", "parameters": 3}, {"name": "large", "parameters": 10}]
FLOPS = [1.0, 3.0, 10.0]


def observation(difficulty: float, tier: int) -> dict[str, float | None]:
    return {"logit_confidence": 10.0 - 5 * difficulty + tier, "api_confidence": None, "step_index": 0.0, "step_tokens": 5.0,
            "is_final": 0.0, "escalations": float(tier > 0), "difficulty": difficulty}


def step(index: int, difficulty: float, action: int = 0) -> StepRecord:
    """An easy step (0) every tier gets right, a medium one (0.5) the mid and large tiers get right,
    a hard one (1) only the large tier gets right."""
    correct = [difficulty == 0.0, difficulty <= 0.5, True]
    table = [{"tier": k, "model": TIERS[k]["name"], "text": f"s{k}", "correct": correct[k], "flops": FLOPS[k],
              "observation": observation(difficulty, k)} for k in range(3)]
    return StepRecord(index=index, observation=table[0]["observation"], action=action, mu_escalate=0.5, draft="s0",
                      escalated="s2", draft_correct=correct[0], escalated_correct=True, draft_flops=1.0,
                      escalate_flops=10.0, cost=1.0 + 10.0 * action, tiers=table)


def episodes(n: int, seed: int) -> list[Episode]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        steps = [step(t, rng.choice([0.0, 0.5, 1.0]), action=1) for t in range(3)]
        out.append(Episode(f"p{seed}:{i}", "q", "1", steps, reward=1, target_reward=1, target_flops=30.0))
    return out


def artifact(k: int = 3) -> PolicyArtifact:
    n = len(CONFIDENCE_SCHEMA.names)
    return PolicyArtifact(PolicyNetwork(n, 8, 2, k, tier_input=True), 0.0, 0.1, CONFIDENCE_SCHEMA, [0.0] * n, [1.0] * n, 8, 2,
                          TIERS[:k])


def test_tensors_hold_every_tier_of_every_step_and_a_2_tier_view() -> None:
    data = to_tier_tensors(episodes(2, 0), artifact(), [0, 1, 2])
    assert data.x.shape == (6, 3, len(CONFIDENCE_SCHEMA.names) + 3)
    assert data.ok.shape == data.flops.shape == (6, 3)
    assert data.starts == [0, 3] and data.ends == [3, 6]
    assert torch.equal(data.x[0, :, -3:], torch.eye(3))  # the one-hot tier of each entry
    two = to_tier_tensors(episodes(2, 0), artifact(2), [0, 2])
    assert two.flops[0].tolist() == [1.0, 10.0] and bool(two.ok[:, 1].all())


def test_traces_without_tier_tables_are_refused_with_what_to_do() -> None:
    plain = episodes(1, 0)
    plain[0].steps[1].tiers = None
    with pytest.raises(MissingTierTableError, match="record_tiers"):
        to_tier_tensors(plain, artifact(), [0, 1, 2])


def test_walk_pays_every_tier_visited_and_the_surrogate_miss_follows_the_kept_steps() -> None:
    data = to_tier_tensors([Episode("e", "q", "1", [step(0, 0.5), step(1, 0.0)], 1, 1, 20.0)], artifact(), [0, 1, 2])
    up_one = walk(data, 0, lambda row, k: (k + (k == 0), 1.0))  # escalate 0 → 1, then accept
    assert up_one.kept == [1, 1] and up_one.flops == 2 * (1.0 + 3.0)
    assert [d[1:3] for d in up_one.decisions] == [(0, 1), (1, 1)] * 2
    assert not walk_miss(data, 0, up_one.kept)
    assert walk_miss(data, 0, [0, 0])  # the draft's medium step fails the verifier
    straight_up = walk(data, 0, lambda row, k: (2, 1.0))
    assert straight_up.kept == [2, 2] and straight_up.flops == 2 * (1.0 + 10.0)
    # The gate fixes a step the behaviour kept wrong (the draft's, action 0): the recorded rows after it still count.
    fixed = to_tier_tensors([Episode("e", "q", "1", [step(0, 0.5, action=0), step(1, 0.5, action=0)], 0, 1, 20.0)],
                            artifact(), [0, 1, 2])
    assert walk_miss(fixed, 0, [1, 0])  # right first step, then the draft's wrong one: a miss
    assert not walk_miss(fixed, 0, [1, 1])
    target_wrong = to_tier_tensors([Episode("e", "q", "1", [step(0, 1.0)], 1, 0, 10.0)], artifact(), [0, 1, 2])
    assert not walk_miss(target_wrong, 0, [0])  # R_M = 0: covered whatever is kept
    # After the behaviour's wrong step no tier writes a right one (v2's verifier: a step building on a wrong result):
    # those rows count no miss, whatever is kept there; a wrong step kept before them still does.
    broken = step(1, 0.5, action=0)
    for entry in broken.tiers:
        entry["correct"] = False
    after_wrong = to_tier_tensors([Episode("e", "q", "1", [step(0, 0.5, action=0), broken], 0, 1, 20.0)], artifact(), [0, 1, 2])
    assert not walk_miss(after_wrong, 0, [1, 0]) and not walk_miss(after_wrong, 0, [2, 2])
    assert walk_miss(after_wrong, 0, [0, 2])


def test_replay_batch_puts_coverage_on_the_last_decision_and_cost_on_each() -> None:
    data = to_tier_tensors(episodes(2, 1), artifact(), [0, 1, 2])
    walks = [walk(data, e, lambda row, k: (2, 0.5)) for e in range(2)]
    batch = replay_batch(data, [0, 1], walks, cost_scale=10.0)
    assert batch.x.shape == (6, len(CONFIDENCE_SCHEMA.names) + 3)
    assert batch.reward.tolist() == pytest.approx([-1.1] * 6)  # draft + target, scaled
    assert batch.coverage.tolist() == [0, 0, 1, 0, 0, 1]
    assert batch.starts == [0, 3] and batch.action.tolist() == [2] * 6


def test_the_network_never_puts_mass_on_a_weaker_tier() -> None:
    net = PolicyNetwork(4, 8, 2, 3, tier_input=True)
    x = torch.cat([torch.randn(3, 4), torch.eye(3)], dim=1)
    probs = net.probabilities(x).detach()
    assert probs[1, 0] == 0 and probs[2, :2].sum() == 0 and float(probs[2, 2]) == pytest.approx(1.0)
    assert torch.allclose(probs.sum(-1), torch.ones(3))


def test_cpo_learns_which_tier_each_kind_of_step_needs() -> None:
    args = TierCPOArgs(alpha=0.1, steps=50, batch_size=16, hidden=16, delta=0.1, seed=0, kappa_init=0.5)
    trained, history = train_tier_policy(episodes(120, 0), TIERS, args, calibration=episodes(60, 1), progress=False,
                                         schema=CONFIDENCE_SCHEMA)  # the observations above are v1's
    assert len(history) == 50 and trained.training["columns"] == [0, 1, 2]
    assert trained.guarantee is not None and trained.guarantee["type"] == "split-conformal"
    calibration = trained.training["calibration"]
    assert calibration["misses"] <= 0.1 * 61 - 1
    # Cheaper than sending every step to the large tier (11 FLOPs a step), and no step needlessly sent there.
    assert calibration["mean_flops"] < 3 * 11.0 * 0.75
    easy, medium, hard = (trained.probabilities(observation(d, 0), 0) for d in (0.0, 0.5, 1.0))
    assert easy[0] > 0.5
    assert medium[1] > medium[2] and hard[2] > hard[1]


def test_labels_are_the_cheapest_verified_tier_at_or_above_each_tier() -> None:
    ok = torch.tensor([[0.0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    assert cheapest_accepted(ok).tolist() == [[1, 1, 2], [0, 1, 2], [2, 2, 2], [2, 2, 2], [0, 2, 2]]


def test_warm_start_alone_routes_each_kind_of_step_to_its_cheapest_right_tier() -> None:
    """The supervised start (no CPO update) already accepts easy drafts and sends medium steps to the
    mid tier, not the large one: the routing the random start's CPO misses on the shipped tiers."""
    args = TierCPOArgs(alpha=0.1, steps=0, warm_start=200, hidden=16, seed=0)
    # the synthetic observations are v1's features: train on that schema (the default, v2, holds them and more)
    trained, history = train_tier_policy(episodes(120, 0), TIERS, args, calibration=episodes(60, 1), progress=False,
                                         schema=CONFIDENCE_SCHEMA)
    assert history == [] and trained.training["args"]["warm_start"] == 200
    easy, medium, hard = (trained.probabilities(observation(d, 0), 0) for d in (0.0, 0.5, 1.0))
    assert easy[0] > 0.9 and medium[1] > 0.9 and hard[2] > 0.9
    assert trained.probabilities(observation(1.0, 1), 1)[2] > 0.9  # the mid tier's hard step goes up too
    calibration = trained.training["calibration"]
    assert calibration["misses"] <= 0.1 * 61 - 1
    # Near the per-step oracle: 1 FLOP (easy), 1 + 3 (medium), 1 + 10 (hard) a step, a third each.
    assert calibration["mean_flops"] == pytest.approx(3 * (1 + 4 + 11) / 3, rel=0.2)
    untrained, _ = train_tier_policy(episodes(120, 0), TIERS, TierCPOArgs(alpha=0.1, steps=0, hidden=16, seed=0),
                                     calibration=episodes(60, 1), progress=False, schema=CONFIDENCE_SCHEMA)
    assert untrained.training["calibration"]["mean_flops"] > 1.2 * calibration["mean_flops"]


def test_calibration_picks_the_largest_kappa_within_the_conformal_bound() -> None:
    data = to_tier_tensors(episodes(40, 2), artifact(), [0, 1, 2])
    policy = artifact().network
    kappa, misses = calibrate_tier_kappa(data, policy, alpha=0.1)
    assert misses <= 0.1 * 41 - 1
    probs = policy.probabilities(data.x).detach()
    above = [k for k in {float(v) for v in (1 - probs[:, [0, 1], [0, 1]]).reshape(-1)} if k > kappa]
    for higher in above:  # every larger candidate misses too often
        chooser = gate_chooser(probs, higher)
        assert sum(walk_miss(data, e, walk(data, e, chooser).kept) for e in range(40)) > 0.1 * 41 - 1


def test_bad_epsilon_names_the_option() -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        TierCPOArgs(epsilon=1.5)


class _Verifier:
    """Accepts the steps that say "good"."""

    def verify(self, question: str, reference: str, prior: object, step: str) -> bool:
        return "good" in step


def test_collection_records_every_tiers_step_and_verdict_and_old_traces_still_read() -> None:
    from scripted import ScriptedModel
    from stepgraph.training.collection.collect import Item, collect_episode

    from stepgraph.routing.gates import AlwaysDraftGate

    models = [ScriptedModel("small", 1, ["bad 1", "\\boxed{1}"]), ScriptedModel("mid", 3, ["good 1", "\\boxed{1} good"]),
              ScriptedModel("large", 10, ["good one", "\\boxed{1} good"])]
    episode = collect_episode(models, AlwaysDraftGate(), _Verifier(), Item("p", "q", "1"), seed=3, record_tiers=True)
    first = episode.steps[0].tiers
    assert first is not None and [e["model"] for e in first] == ["small", "mid", "large"]
    assert [e["text"] for e in first] == ["bad 1", "good 1", "good one"]
    assert [e["correct"] for e in first] == [False, True, True]
    assert first[2]["flops"] > first[1]["flops"] > first[0]["flops"] > 0
    assert first[1]["observation"]["escalations"] == 1.0 and first[0]["observation"]["escalations"] == 0.0
    assert Episode.from_dict(episode.to_dict()).steps[0].tiers == first
    old = episode.to_dict()
    for step_dict in old["steps"]:
        del step_dict["tiers"]  # a store written before tier tables
    assert Episode.from_dict(old).steps[0].tiers is None
    plain = collect_episode(models, AlwaysDraftGate(), _Verifier(), Item("p", "q", "1"), seed=3)
    assert plain.steps[0].tiers is None


@pytest.mark.parametrize("gate_name", ["draft", "target"])
def test_reobserve_recomputes_every_tiers_observation_as_collection_made_it(gate_name: str) -> None:
    """A store collected before a feature existed gets it in the tier table too (the K-tier policy reads that table);
    the escalation count is the graph's own, also where one step escalated past two tiers."""
    from scripted import ScriptedModel
    from stepgraph.training.collection.collect import Item, collect_episode
    from stepgraph.training.collection.observations import reobserve

    from stepgraph.routing.gates import AlwaysDraftGate, AlwaysTargetGate

    models = [ScriptedModel("small", 1, ["bad 2", "\\boxed{2}"]), ScriptedModel("mid", 3, ["good 1", "\\boxed{1} good"]),
              ScriptedModel("large", 10, ["Ann has 5 pens, good", "\\boxed{5} good"])]
    gate = AlwaysDraftGate() if gate_name == "draft" else AlwaysTargetGate()
    episode = collect_episode(models, gate, _Verifier(), Item("p", "Ann has 5 pens and 3 cups.", "5"), seed=3, record_tiers=True)
    stale = Episode.from_dict(episode.to_dict())
    for record in stale.steps:
        for entry in (record.tiers or []):
            entry["observation"] = {k: v for k, v in entry["observation"].items() if k != "unused_question_numbers"}
    fresh = reobserve(stale)
    assert [[e["observation"] for e in r.tiers or []] for r in fresh.steps] == \
        [[e["observation"] for e in r.tiers or []] for r in episode.steps]
    # the question's 5 and 3: the draft's kept "bad 2" used neither, the target's "Ann has 5 pens" used the 5
    assert fresh.steps[1].tiers[0]["observation"]["unused_question_numbers"] == (2.0 if gate_name == "draft" else 1.0)
