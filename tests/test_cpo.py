"""The CPO trainer: V-trace, conjugate gradient, trust region, κ rule, and a small end-to-end run."""

import random
import warnings

import pytest
import torch
from stepgraph.training.data.records import Episode, StepRecord
from stepgraph.training.learning import cpo

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork, kappa_from_probability
from stepgraph.features import CONFIDENCE_SCHEMA, FEATURE_SCHEMA


def _episode(rng: random.Random, i: int, behaviour_eps: float = 0.5) -> Episode:
    """Low-confidence drafts are wrong and their escalation right; high-confidence drafts are right."""
    steps = []
    all_ok = True
    for t in range(rng.randint(2, 4)):
        low = rng.random() < 0.3
        conf = rng.gauss(4.0, 1.0) if low else rng.gauss(9.0, 1.0)
        action = int(rng.random() < behaviour_eps)
        all_ok &= (not low) or bool(action)
        obs = {n: None for n in CONFIDENCE_SCHEMA.names}
        obs.update(logit_confidence=conf, step_index=float(t), step_tokens=8.0, is_final=0.0, escalations=0.0)
        steps.append(StepRecord(t, obs, action, behaviour_eps, "d", "e", not low, True, 1.0, 4.0, 1.0 + 4.0 * action))
    return Episode(f"p{i}", "q", "1", steps, reward=int(all_ok), target_reward=int(rng.random() < 0.95), target_flops=4.0 * len(steps))


def test_vtrace_matches_a_hand_computed_example():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    values = torch.tensor([0.5, 1.0, 1.5])
    rhos = torch.tensor([1.0, 0.5, 2.0])
    cs = torch.tensor([1.0, 0.5, 1.0])
    vs, adv = cpo.vtrace_targets(rewards, values, bootstrap_value=0.0, rhos=rhos, cs=cs, gamma=0.9)
    # δ2 = 2.0·(2 + 0.9·0 − 1.5) = 1.0;              v2 = 1.5 + 1.0 = 2.5
    # δ1 = 0.5·(0 + 0.9·1.5 − 1.0) = 0.175;          v1 = 1.0 + 0.175 + 0.9·0.5·(2.5 − 1.5) = 1.625
    # δ0 = 1.0·(1 + 0.9·1.0 − 0.5) = 1.4;            v0 = 0.5 + 1.4 + 0.9·1.0·(1.625 − 1.0) = 2.4625
    assert vs.tolist() == pytest.approx([2.4625, 1.625, 2.5])
    # A_t = ρ_t (r_t + γ v_{t+1} − V_t): A0 = 1 + 0.9·1.625 − 0.5 = 1.9625; A1 = 0.5·(0.9·2.5 − 1) = 0.625; A2 = 2·(2 − 1.5) = 1
    assert adv.tolist() == pytest.approx([1.9625, 0.625, 1.0])


def test_conjugate_gradient_solves_an_spd_system():
    torch.manual_seed(0)
    m = torch.randn(6, 6)
    a = m @ m.T + 6 * torch.eye(6)
    b = torch.randn(6)
    x = cpo.conjugate_gradient(lambda v: a @ v, b, iters=20)
    assert torch.allclose(a @ x, b, atol=1e-4)


def test_kappa_update_direction():
    assert cpo.update_kappa(0.5, miss=True, alpha=0.02, eta=0.1) == pytest.approx(0.5 - 0.1 * 0.98)
    assert cpo.update_kappa(0.5, miss=False, alpha=0.02, eta=0.1) == pytest.approx(0.5 + 0.1 * 0.02)
    assert cpo.update_kappa(0.01, miss=True, alpha=0.02, eta=0.1) == 0.0


def test_a_miss_raises_the_escalation_rate():
    torch.manual_seed(0)
    net = PolicyNetwork(3)
    x = torch.randn(500, 3)
    rate = lambda kappa: float((net.escalate_probability(x).detach() >= kappa).float().mean())
    with torch.no_grad():
        kappa = float(net.escalate_probability(x).median())
    after_miss = cpo.update_kappa(kappa, miss=True, alpha=0.02, eta=0.1)
    after_hit = cpo.update_kappa(kappa, miss=False, alpha=0.02, eta=0.1)
    assert rate(after_miss) > rate(kappa) >= rate(after_hit)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_trust_region_step_respects_the_kl_radius(scale):
    torch.manual_seed(1)
    policy = PolicyNetwork(4)
    x = torch.randn(64, 4)
    action = torch.randint(0, 2, (64,))
    cost_adv = scale * torch.randn(64)  # large advantages: the raw step would overshoot
    miss_adv = torch.randn(64)
    args = cpo.CPOArgs(delta=0.01)
    with torch.no_grad():
        old = torch.log_softmax(policy(x), -1)
    info = cpo.trust_region_step(policy, x, action, cost_adv, miss_adv, miss_value=0.0, args=args)
    with torch.no_grad():
        kl = float(cpo.mean_kl(policy, x, old))
    assert kl <= args.delta + 1e-6
    assert info["kl"] == pytest.approx(kl, abs=1e-6)
    assert info["accepted"] == 1.0 and kl > 0


@pytest.mark.slow  # 150 updates
def test_training_learns_to_escalate_low_confidence_drafts():
    rng = random.Random(0)
    episodes = [_episode(rng, i) for i in range(200)]
    held_out = [_episode(rng, 1000 + i) for i in range(200)]
    artifact, history = cpo.train_policy(episodes, cpo.CPOArgs(steps=150, seed=0), CONFIDENCE_SCHEMA, progress=False)
    assert len(history) == 150 and {"charts/kappa", "losses/critic_cost"} <= set(history[-1])
    obs = {n: None for n in CONFIDENCE_SCHEMA.names}
    assert artifact.kappa == kappa_from_probability(history[-1]["charts/kappa"])  # no calibration: the online κ, converted
    low = artifact.score({**obs, "logit_confidence": 3.5, "step_index": 1.0, "step_tokens": 8.0})
    high = artifact.score({**obs, "logit_confidence": 9.5, "step_index": 1.0, "step_tokens": 8.0})
    assert low >= artifact.kappa > high
    data = cpo.to_tensors(held_out, artifact, cost_scale=1.0)
    assert cpo.score_coverage(data, artifact.scores(data.x), artifact.kappa) >= 1 - 0.02 - 0.03


def test_empty_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one episode"):
        cpo.train_policy([], cpo.CPOArgs(steps=1), progress=False)


def test_artifact_round_trip_keeps_decisions(tmp_path):
    rng = random.Random(1)
    artifact, _ = cpo.train_policy([_episode(rng, i) for i in range(30)], cpo.CPOArgs(steps=5), progress=False)
    artifact.save(tmp_path)
    loaded = PolicyArtifact.load(tmp_path)
    obs = {n: None for n in CONFIDENCE_SCHEMA.names} | {"logit_confidence": 5.0}
    assert loaded.escalate_probability(obs) == pytest.approx(artifact.escalate_probability(obs))
    assert loaded.kappa == artifact.kappa


def test_ignored_features_never_reach_the_network(tmp_path):
    """A policy trained without a feature decides the same whether a backend reports it or not."""
    rng = random.Random(2)
    episodes = [_episode(rng, i) for i in range(30)]
    for e in episodes:  # give api_confidence a signal the policy could otherwise pick up
        for s in e.steps:
            s.observation["api_confidence"] = 0.2 if s.draft_correct else 0.99
    artifact, _ = cpo.train_policy(episodes, cpo.CPOArgs(steps=5), CONFIDENCE_SCHEMA, progress=False,
                                   ignore_features=["api_confidence"])  # v1 traces, the v1 schema
    assert artifact.ignored == ["api_confidence", "difficulty"]  # left out, and never recorded
    artifact.save(tmp_path)
    loaded = PolicyArtifact.load(tmp_path)
    assert loaded.ignored == artifact.ignored
    obs = {n: None for n in CONFIDENCE_SCHEMA.names} | {"logit_confidence": 5.0, "step_index": 1.0}
    without = loaded.escalate_probability(obs)
    for reported in ({"api_confidence": 0.01}, {"api_confidence": 50.0}, {"difficulty": 0.9}):
        assert loaded.escalate_probability(obs | reported) == without
    kept, _ = cpo.train_policy(episodes, cpo.CPOArgs(steps=5), CONFIDENCE_SCHEMA, progress=False)
    assert kept.ignored == ["difficulty"]
    v2, _ = cpo.train_policy(episodes, cpo.CPOArgs(steps=5), progress=False)  # the default schema: v2's extras never recorded
    assert v2.schema == FEATURE_SCHEMA and v2.ignored == ["difficulty", *FEATURE_SCHEMA.names[len(CONFIDENCE_SCHEMA.names):]]
    assert kept.escalate_probability(obs | {"api_confidence": 0.01}) != kept.escalate_probability(obs | {"api_confidence": 50.0})


def test_ignoring_an_unknown_feature_is_a_clear_error():
    with pytest.raises(ValueError, match="not features"):
        cpo.train_policy([_episode(random.Random(3), 0)], cpo.CPOArgs(steps=1), progress=False, ignore_features=["max_logit"])


@pytest.mark.slow  # 60 updates and a brute-force check over every candidate
def test_calibration_picks_the_largest_kappa_meeting_the_bound():
    rng = random.Random(2)
    episodes = [_episode(rng, i) for i in range(200)]
    calibration = [_episode(rng, 500 + i) for i in range(300)]
    artifact, _ = cpo.train_policy(episodes, cpo.CPOArgs(steps=60, seed=1), progress=False, calibration=calibration)
    summary = artifact.training
    assert summary["calibrated_kappa"] == artifact.kappa and summary["calibration_episodes"] == 300
    data = cpo.to_tensors(calibration, artifact, cost_scale=1.0)
    n, allowed = 300, int(0.02 * 301) - 1
    scores = artifact.scores(data.x)  # log-odds of escalation
    misses = round((1 - cpo.score_coverage(data, scores, artifact.kappa)) * n)
    assert misses <= allowed
    # Brute force over every distinct score: no larger candidate meets the bound.
    kappa, _ = cpo.calibrate_kappa(data, artifact.network, 0.02, max_candidates=10**6, scale="log_odds")
    for candidate in {float(p) for p in scores if p > kappa}:
        assert round((1 - cpo.score_coverage(data, scores, candidate)) * n) > allowed


def test_surrogate_stops_where_the_gate_leaves_the_recorded_trajectory():
    steps = [
        StepRecord(0, {"logit_confidence": 1.0}, 0, 0.5, "bad", "good", False, True, 1.0, 4.0, 1.0),
        StepRecord(1, {"logit_confidence": 9.0}, 0, 0.5, "x", "y", False, False, 1.0, 4.0, 1.0),  # after a bad prefix
    ]
    episode = Episode("p", "q", "1", steps, reward=0, target_reward=1, target_flops=8.0)
    artifact = cpo.train_policy([episode], cpo.CPOArgs(steps=1), progress=False)[0]
    data = cpo.to_tensors([episode], artifact, cost_scale=1.0)
    assert not cpo.episode_miss(data, 0, torch.tensor([1, 0]))  # Γ fixes step 0: later records are off its path
    assert cpo.episode_miss(data, 0, torch.tensor([0, 0]))  # Γ keeps the wrong draft


def test_training_raises_no_warnings():
    """Regression: reading the critics' losses once warned 'Converting a tensor with requires_grad=True to a scalar'."""
    rng = random.Random(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, history = cpo.train_policy([_episode(rng, i) for i in range(10)], cpo.CPOArgs(steps=3), progress=False)
    assert all(h["charts/cpo_case"] in set(cpo.CPOCase) for h in history)


def test_stored_episodes_keep_the_trace_store_field_name():
    episode = _episode(random.Random(5), 0)
    stored = episode.to_dict()
    assert {"behaviour_prob"} <= set(stored["steps"][0]) and "mu_escalate" not in stored["steps"][0]
    assert Episode.from_dict(stored) == episode
