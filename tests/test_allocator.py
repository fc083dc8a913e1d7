"""The ex-ante allocator: its observation, training, artifact, and the graph that consults it before drafting."""

import json
import random

import pytest
import torch
from safetensors.torch import save_file
from stepgraph.training.data.records import Episode, StepRecord
from stepgraph.training.learning.allocator import (
    calibrate_allocator,
    cheapest_accepted_tier,
    episode_observations,
    to_batchable,
    train_allocator,
)
from stepgraph.training.learning.cpo import CPOArgs

from stepgraph.errors import PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.graph import build_graph
from stepgraph.routing.allocator import (
    ALLOCATOR_SCHEMA,
    Allocation,
    Allocator,
    AllocatorInput,
    FixedAllocator,
    PriorStep,
    allocator_observation,
    tier_from_probabilities,
)
from stepgraph.routing.gates import AlwaysDraftGate, ConfidenceThresholdGate
from stepgraph.routing.learned_allocator import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AllocatorArtifact,
    AllocatorNetwork,
    LearnedAllocator,
)
from tests.scripted import ScriptedModel

TIERS = [{"name": "draft", "parameters": 100}, {"name": "target", "parameters": 1000}]
STEPS = ["2+3=5", "5*4=20", "\\boxed{20}"]


def _pair(draft_conf: float = 10.0):
    return ScriptedModel("draft", 100, STEPS, confidence=draft_conf), ScriptedModel("target", 1000, STEPS, confidence=30.0)


# --- observation and decision rule ---------------------------------------------------------------


def test_observation_uses_only_the_question_and_the_prefix():
    first = allocator_observation("Ann has 12 coins and 3 more.", [])
    assert set(first) == set(ALLOCATOR_SCHEMA.names)
    assert first["question_numbers"] == 2 and first["question_max_digits"] == 2 and first["step_index"] == 0
    assert first["previous_api_confidence"] is None and first["previous_sent_up"] is None
    draft_obs = {"api_confidence": 0.4, "logit_confidence": 9.0, "step_tokens": 5.0}
    later = allocator_observation("q 1", [PriorStep(0, draft_obs), PriorStep(1, None)])
    assert later["sent_up"] == 1 and later["previous_sent_up"] == 1 and later["step_index"] == 2
    assert later["previous_api_confidence"] is None  # the last step had no draft: nothing to report


@pytest.mark.parametrize(("probabilities", "kappa", "base", "tier"), [
    ([0.9, 0.1], 0.5, 0, 0),
    ([0.4, 0.6], 0.5, 0, 1),
    ([0.5, 0.3, 0.2], 0.6, 0, 0),  # P(> 0) = 0.5 < 0.6
    ([0.5, 0.3, 0.2], 0.3, 0, 1),  # P(> 0) = 0.5 ≥ 0.3, P(> 1) = 0.2 < 0.3
    ([0.5, 0.3, 0.2], 0.1, 0, 2),
    ([0.9, 0.05, 0.05], 0.5, 1, 1),  # never below the base tier
    ([float("nan"), 0.5], 0.5, 0, 1),  # a broken score: the safe side
])
def test_tier_from_probabilities(probabilities, kappa, base, tier):
    assert tier_from_probabilities(probabilities, kappa, base)[0] == tier


# --- the graph -----------------------------------------------------------------------------------


def test_default_graph_has_no_allocate_or_plan_node_and_unchanged_output():
    draft, target = _pair()
    graph = build_graph([draft, target], AlwaysDraftGate())
    assert set(graph.nodes) == {"__start__", "start", "draft", "features", "gate", "escalate", "append"}
    result = graph.invoke({"question": "q"})
    assert set(result) == {"question", "steps", "answer", "stop_reason", "costs", "totals", "escalations", "in_domain"}
    assert [s["tier"] for s in result["steps"]] == [0, 0, 0] and len(target.calls) == 0


def test_allocating_the_draft_tier_is_the_default_graph():
    plain = build_graph(list(_pair(5.0)), ConfidenceThresholdGate(8.0, feature="logit_confidence")).invoke({"question": "q"})
    allocated = build_graph(list(_pair(5.0)), ConfidenceThresholdGate(8.0, feature="logit_confidence"),
                            allocator=FixedAllocator(0)).invoke({"question": "q"})
    assert allocated == plain


def test_allocating_the_target_skips_every_draft_call():
    draft, target = _pair()
    result = build_graph([draft, target], AlwaysDraftGate(), allocator=FixedAllocator(1)).invoke({"question": "q"})
    assert len(draft.calls) == 0 and len(target.calls) == 3
    assert [s["tier"] for s in result["steps"]] == [1, 1, 1]
    assert all(len(s["attempts"]) == 1 and s["attempts"][0]["tier"] == 1 for s in result["steps"])
    assert set(result["costs"]) == {"1"} and result["answer"] == "20"


class _SecondStepUp(Allocator):
    name = "second-step-up"

    def __init__(self):
        self.seen: list[AllocatorInput] = []

    def allocate(self, x):
        self.seen.append(x)
        return Allocation(1 if len(x.steps) == 1 else 0, 0.0)


def test_allocator_and_post_hoc_gate_combine():
    draft, target = _pair(draft_conf=5.0)
    allocator = _SecondStepUp()
    gate = ConfidenceThresholdGate(8.0, feature="logit_confidence")  # escalates every low-confidence draft
    result = build_graph([draft, target], gate, allocator=allocator).invoke({"question": "q 12"})
    # Step 1 was sent up ex ante (no draft call); steps 0 and 2 were drafted, then escalated by the gate.
    assert len(draft.calls) == 2 and len(target.calls) == 3
    assert [len(s["attempts"]) for s in result["steps"]] == [2, 1, 2]
    assert [x.observation["step_index"] for x in allocator.seen] == [0, 1, 2]
    assert allocator.seen[2].observation["previous_sent_up"] == 1.0
    assert allocator.seen[2].observation["previous_logit_confidence"] is None


async def test_async_graph_consults_the_allocator():
    draft, target = _pair()
    result = await build_graph([draft, target], AlwaysDraftGate(), allocator=FixedAllocator(1)).ainvoke({"question": "q"})
    assert len(draft.calls) == 0 and result["answer"] == "20"


# --- training ------------------------------------------------------------------------------------


def _synthetic_episodes(n: int, seed: int) -> list[Episode]:
    """Questions with a 3-digit number get every draft step wrong; others get it right."""
    rng = random.Random(seed)
    episodes = []
    for i in range(n):
        hard = rng.random() < 0.3
        question = f"Bo has {rng.randint(100, 999) if hard else rng.randint(1, 9)} coins. He gets {rng.randint(1, 9)} more."
        steps = []
        for t in range(3):
            action = int(rng.random() < 0.5)
            obs = {n: 0.5 for n in CONFIDENCE_SCHEMA.names} | {"step_index": float(t)}
            steps.append(StepRecord(t, obs, action, 0.5, "d", "e", not hard, True, 10.0, 100.0, 10.0 + 100.0 * action))
        reward = int(not hard or all(s.action for s in steps))
        episodes.append(Episode(f"p{seed}:{i}", question, "1", steps, reward, 1, 300.0))
    return episodes


def test_labels_are_the_cheapest_tier_the_verifier_accepts():
    step = _synthetic_episodes(1, 0)[0].steps[0]
    step.draft_correct, step.escalated_correct = True, True
    assert cheapest_accepted_tier(step) == 0
    step.draft_correct = False
    assert cheapest_accepted_tier(step) == 1
    step.escalated_correct = None
    assert cheapest_accepted_tier(step) == 1  # none accepted: the strongest


def test_observations_replay_the_recorded_prefix():
    episode = _synthetic_episodes(1, 0)[0]
    rows = episode_observations(episode)
    assert [r["step_index"] for r in rows] == [0, 1, 2]
    assert rows[1]["previous_sent_up"] == float(episode.steps[0].action)


def test_training_learns_the_labels_and_calibrates():
    train, held_out = _synthetic_episodes(120, 1), _synthetic_episodes(120, 2)
    artifact = train_allocator(train, CPOArgs(steps=5, batch_size=4, alpha=0.05), tiers=TIERS, calibration=held_out)
    allocator = LearnedAllocator(artifact)
    for question, hard in [("Bo has 512 coins. He gets 3 more.", True), ("Bo has 5 coins. He gets 3 more.", False)]:
        x = AllocatorInput(question, (), allocator_observation(question, []), 0, 2)
        assert allocator.allocate(x).tier == int(hard)
    assert artifact.training["supervised_accuracy"] > 0.95
    assert artifact.training["selected_stage"] in {"supervised", "rl"}
    assert set(artifact.training["calibration_by_stage"]) == {"supervised", "rl"}
    assert artifact.guarantee["type"] == "split-conformal"
    assert artifact.training["calibration_surrogate_miss"] <= 0.05
    assert 0.2 < artifact.training["calibration_sent_up"] < 0.5  # the hard questions, not everything


def test_confident_drafts_keep_their_order_for_calibration():
    """1 − p_0 rounds to 0 for every confident "draft" in float32, which tied them all for κ."""
    net = AllocatorNetwork(1, 2, hidden=1, layers=1)
    with torch.no_grad():
        net.net[-1].weight.copy_(torch.tensor([[1.0], [0.0]]))
        net.net[-1].bias.zero_()
    p_up = net.escalate_probability(torch.tensor([[40.0], [50.0], [60.0]]))
    assert bool((p_up > 0).all()) and p_up[0] > p_up[1] > p_up[2]


def test_calibration_sends_everything_up_when_nothing_else_is_covered():
    episodes = _synthetic_episodes(60, 3)
    for e in episodes:
        e.reward = 0
        for s in e.steps:  # the behaviour kept only the next tier's (verified) steps; every draft fails
            s.draft_correct, s.action = False, 1
    net = AllocatorNetwork(len(ALLOCATOR_SCHEMA.names), 2)
    artifact = AllocatorArtifact(net, 0.5, 0.05, TIERS, [0.0] * len(ALLOCATOR_SCHEMA.names), [1.0] * len(ALLOCATOR_SCHEMA.names))
    chosen = calibrate_allocator(to_batchable(episodes, artifact, 1.0), episodes, net, 0.05)
    assert chosen["misses"] == 0 and chosen["sent_up"] == 1.0


# --- the artifact --------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    n = len(ALLOCATOR_SCHEMA.names)
    artifact = AllocatorArtifact(AllocatorNetwork(n, 2, 8, 2), 0.3, 0.05, TIERS, [1.0] * n, [2.0] * n, 8, 2)
    return artifact, artifact.save(tmp_path / "allocator")


def test_artifact_round_trip(saved):
    artifact, directory = saved
    loaded = AllocatorArtifact.load(directory, TIERS)
    obs = allocator_observation("Ann has 3 coins.", [])
    assert loaded.probabilities(obs) == pytest.approx(artifact.probabilities(obs))
    assert (loaded.kappa, loaded.alpha, loaded.tiers) == (0.3, 0.05, TIERS)
    assert not any(directory.glob("*.pkl")) and json.loads((directory / MANIFEST_FILE).read_text())["format"] == "stepgraph.allocator"


def test_artifact_refuses_a_replaced_weights_file(saved):
    _, directory = saved
    save_file({"net.0.weight": torch.zeros(8, len(ALLOCATOR_SCHEMA.names))}, str(directory / WEIGHTS_FILE))
    with pytest.raises(PolicyFileError, match="checksum"):
        AllocatorArtifact.load(directory)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m | {"format_version": 1, "kappa": 1.5}, "kappa"),  # format 1: κ a probability in [0, 1]
    (lambda m: m | {"kappa": "high"}, "kappa"),
    (lambda m: m | {"tiers": m["tiers"][:1]}, "tiers"),
    (lambda m: m | {"format": "stepgraph.policy"}, "format"),
    (lambda m: m | {"feature_schema": {**m["feature_schema"], "version": 9}}, "retrain|train it again"),
    (lambda m: m | {"mean": m["mean"][:2]}, "one value per feature"),
])
def test_artifact_refuses_a_bad_manifest(saved, edit, match):
    _, directory = saved
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    (directory / MANIFEST_FILE).write_text(json.dumps(edit(manifest)))
    with pytest.raises(PolicyFileError, match=match):
        AllocatorArtifact.load(directory)


def test_artifact_refuses_corrupted_json_missing_files_and_other_tiers(saved, tmp_path):
    _, directory = saved
    with pytest.raises(PolicyFileError, match="other sizes"):
        AllocatorArtifact.load(directory, [{"name": "draft", "parameters": 100}, {"name": "target", "parameters": 5}])
    with pytest.raises(PolicyFileError, match="missing"):
        AllocatorArtifact.load(tmp_path / "nowhere")
    (directory / MANIFEST_FILE).write_text("{\"format\": ")
    with pytest.raises(PolicyFileError, match="corrupted"):
        AllocatorArtifact.load(directory)


def test_save_refuses_what_load_would_refuse(saved, tmp_path):
    artifact, _ = saved
    artifact.kappa = float("inf")  # κ is a log-odds: any finite number
    with pytest.raises(PolicyFileError, match="kappa"):
        artifact.save(tmp_path / "bad")
    artifact.kappa = 0.3
    with torch.no_grad():
        artifact.network.net[0].weight[0, 0] = float("nan")
    with pytest.raises(PolicyFileError, match="not finite"):
        artifact.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# --- CLI and bench rows --------------------------------------------------------------------------


def test_train_allocator_cli_writes_a_loadable_artifact(tmp_path, capsys):
    from stepgraph.training.data.store import TraceStore

    from stepgraph.cli import main

    store = tmp_path / "traces.sqlite"
    with TraceStore(store) as s:
        s.set_meta("models", TIERS)
        for e in _synthetic_episodes(40, 4):
            s.add(e, "train")
        for e in _synthetic_episodes(40, 5):
            s.add(e, "calibration")
    out = tmp_path / "allocator"
    assert main(["train", "--allocator", "--store", str(store), "--out", str(out), "--steps", "3", "--alpha", "0.1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(out) and report["guarantee"] == "split-conformal"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert LearnedAllocator.from_path(out, TIERS).artifact.tiers == TIERS


def test_bench_rows_count_draft_calls_saved():
    from stepgraph.training.bench.bench_allocator import allocator_bench
    from stepgraph.training.collection.collect import Item

    draft, target = _pair()
    items = [Item("a", "q", "20"), Item("b", "q 1", "20")]
    report = allocator_bench([draft, target], items, allocator=FixedAllocator(1), policy=AlwaysDraftGate(), seeds=(0,))
    summary = report["summary"]
    assert summary["allocator"]["draft_calls"] == 0 and summary["allocator"]["draft_calls_saved"] == 3
    assert summary["policy"]["draft_calls"] == 3 and summary["policy"]["draft_calls_saved"] == 0
    assert summary["allocator"]["covered"]["mean"] == 1.0
    assert summary["allocator"]["flops_vs_policy"]["mean"] > 0  # the target writes every step
    assert report["rows"]["allocator"][0]["tier_steps"] == [0, 3]
