"""The real vLLM offline engine as a tier: the same numbers as transformers, batching, faults.

One engine per shipped model for this module (about 20 s each to start on CPU); the draft's
engine reports raw logits (STEER's score), the target's log-probabilities (the API score).
"""

import asyncio
import os
import signal
import threading

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from same_routing import GREEDY, assert_routes_like

from stepgraph.defaults import resolve_gate
from stepgraph.errors import ModelOutputError
from stepgraph.features import api_confidence, logit_confidence
from stepgraph.graph import build_graph
from stepgraph.models.local import TransformersStepModel
from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR
from stepgraph.testbed import testbed_task as shipped_task
from stepgraph.testbed.vllm_serving import ENGINE_ARGS

pytestmark = pytest.mark.slow  # vLLM engines on the shipped models

PROBLEMS = shipped_task().generate("test", 8, seed=21)


@pytest.fixture(scope="module")
def engines(vllm_ready):
    from stepgraph.models.vllm_engine import VLLMStepModel

    draft = VLLMStepModel(DRAFT_MODEL_DIR, engine_kwargs=ENGINE_ARGS)
    target = VLLMStepModel(TARGET_MODEL_DIR, engine_kwargs={**ENGINE_ARGS, "logprobs_mode": "raw_logprobs"})
    yield draft, target
    for model in (draft, target):
        model.close()


@pytest.fixture(scope="module")
def local():
    return TransformersStepModel(DRAFT_MODEL_DIR), TransformersStepModel(TARGET_MODEL_DIR)


def test_engine_reads_the_model_it_serves(engines, local):
    for engine, reference in zip(engines, local):
        assert engine.name == reference.name
        assert engine.n_params == reference.n_params  # counted from safetensors headers
    assert engines[0].logprobs_mode == "raw_logits" and engines[1].logprobs_mode == "raw_logprobs"


@pytest.mark.parametrize("problem", PROBLEMS[:2], ids=["p0", "p1"])
def test_features_from_vllm_equal_transformers_on_the_same_tokens(engines, local, problem):
    steps: list[str] = []
    for _ in range(6):
        for engine, reference in zip(engines, local):
            ours, theirs = engine.generate_step(problem.question, steps, temperature=0), reference.generate_step(problem.question, steps, temperature=0)
            assert ours.tokens == theirs.tokens and ours.text == theirs.text
            assert ours.prompt_tokens == theirs.prompt_tokens and ours.finished == theirs.finished
        draft_v, draft_t = engines[0].generate_step(problem.question, steps, temperature=0), local[0].generate_step(problem.question, steps, temperature=0)
        assert draft_v.max_logits == pytest.approx(draft_t.max_logits, abs=1e-4)
        assert logit_confidence(draft_v) == pytest.approx(logit_confidence(draft_t), abs=1e-4)
        assert api_confidence(draft_v) is None  # a raw-logits engine has no probabilities
        target_v, target_t = engines[1].generate_step(problem.question, steps, temperature=0), local[1].generate_step(problem.question, steps, temperature=0)
        assert target_v.max_logits is None
        assert [v for pos in target_v.top_logprobs for _, v in pos] == pytest.approx([v for pos in target_t.top_logprobs for _, v in pos], abs=1e-4)
        assert [pos[0][0] for pos in target_v.top_logprobs] == [pos[0][0] for pos in target_t.top_logprobs]
        assert api_confidence(target_v) == pytest.approx(api_confidence(target_t), abs=1e-5)
        steps.append(target_t.text)
        if target_t.finished:
            break
    assert steps[-1].startswith("\\boxed{")


def test_question_logprob_equals_transformers_and_is_off_on_a_raw_logit_engine(engines, local):
    question = PROBLEMS[0].question
    assert engines[0].question_logprob(question) is None  # raw logits: one token's value cannot be normalised
    ours, theirs = engines[1].question_logprob(question), local[1].question_logprob(question)
    assert ours.mean_logprob == pytest.approx(theirs.mean_logprob, abs=1e-4)
    assert (ours.question_tokens, ours.prompt_tokens, ours.generated_tokens) == (theirs.question_tokens, theirs.prompt_tokens + 1, 1)


def test_cached_prefix_tokens_are_reported(engines):
    draft = engines[0]
    question = PROBLEMS[3].question
    first = draft.generate_step(question, [], temperature=0)
    second = draft.generate_step(question, [first.text], temperature=0)
    assert second.prompt_tokens > first.prompt_tokens >= 32
    assert 32 <= second.cached_tokens < second.prompt_tokens and second.cached_tokens % 32 == 0  # whole blocks
    assert second.prefill_tokens == second.prompt_tokens - second.cached_tokens


def test_graph_on_vllm_routes_exactly_like_transformers(engines, local):
    """Same tokens, same features, same threshold decisions: the backend is interchangeable."""
    assert_routes_like(engines, local, [p.question for p in PROBLEMS[:3]])


def test_the_default_policy_runs_on_vllm_and_warns_about_the_missing_feature(engines):
    with pytest.warns(RuntimeWarning, match="api_confidence"):
        result = build_graph(list(engines), resolve_gate("policy", n_tiers=2)).invoke({"question": PROBLEMS[4].question}, context=GREEDY)
    assert result["stop_reason"] == "final_answer"
    observations = [s["observation"] for s in result["steps"]]
    assert all(o["logit_confidence"] is not None and o["api_confidence"] is None for o in observations)


def test_a_graph_batch_decodes_many_steps_per_engine_call(engines):
    graph = build_graph(list(engines), resolve_gate("threshold"))
    engines[0].batch_sizes.clear()
    results = graph.batch([{"question": p.question} for p in PROBLEMS], {"max_concurrency": len(PROBLEMS)}, context=GREEDY)
    assert all(r["stop_reason"] == "final_answer" for r in results)
    sizes = engines[0].batch_sizes
    assert max(sizes) > 1  # steps of different runs shared engine iterations
    assert sum(n * k for n, k in sizes.items()) / sum(sizes.values()) > 2
    single = graph.invoke({"question": PROBLEMS[5].question}, context=GREEDY)
    assert [s["text"] for s in results[5]["steps"]] == [s["text"] for s in single["steps"]]


def test_async_steps_join_one_batch_without_a_thread_each(engines):
    """The server's async runs: 16 concurrent agenerate_step calls decode together (threads would cap them
    at the event loop's default executor, 6 on this 2-core machine) and equal the sync result."""
    draft = engines[0]
    questions = [p.question for p in shipped_task().generate("test", 16, seed=33)]

    async def all_at_once():
        return await asyncio.gather(*(draft.agenerate_step(q, [], temperature=0.0, seed=0) for q in questions))

    draft.batch_sizes.clear()
    outputs = asyncio.run(all_at_once())
    assert max(draft.batch_sizes) > min(32, (os.cpu_count() or 1) + 4)
    assert outputs[3].text == draft.generate_step(questions[3], [], temperature=0.0, seed=0).text


def test_prompt_longer_than_the_engine_context_is_refused(engines):
    with pytest.raises(ValueError, match="at most 256"):
        engines[0].generate_step("How many? " * 200, [])


def test_engine_killed_mid_run_fails_cleanly_and_keeps_the_trace(engines):
    """Runs last in this module: it kills the draft engine's core process after the first step."""
    draft, target = engines
    core = draft.llm.llm_engine.engine_core.resources.engine_manager.processes[0]

    class KilledAfterFirstStep:
        name, n_params = draft.name, draft.n_params

        def generate_step(self, question, steps, **kwargs):
            if steps:
                os.kill(core.pid, signal.SIGKILL)
                core.join(timeout=30)
            return draft.generate_step(question, steps, **kwargs)

    saver = InMemorySaver()
    config = {"configurable": {"thread_id": "engine-killed"}}
    graph = build_graph([KilledAfterFirstStep(), target], resolve_gate("draft"), checkpointer=saver)
    outcome: list[BaseException] = []
    runner = threading.Thread(target=lambda: _capture(outcome, graph.invoke, {"question": PROBLEMS[6].question}, config, context=GREEDY))
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), "the run hung after the engine died"
    assert outcome and isinstance(outcome[0], ModelOutputError) and "vLLM engine" in str(outcome[0])
    assert len(graph.get_state(config).values["steps"]) == 1  # the step before the failure is kept


def _capture(sink, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 -- the test inspects what the run raised
        sink.append(exc)


def test_parameters_are_counted_from_a_directory_or_the_hub_cache(tmp_path, monkeypatch):
    import shutil

    from stepgraph.errors import ModelLoadError
    from stepgraph.models.vllm_engine import VLLMStepModel, count_parameters

    expected = TransformersStepModel(DRAFT_MODEL_DIR).n_params
    assert count_parameters(DRAFT_MODEL_DIR) == expected
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    shutil.copy(DRAFT_MODEL_DIR / "model.safetensors", snapshot)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import, so patched here
    assert count_parameters("acme/tiny") == expected
    with pytest.raises(ModelLoadError, match="pass n_params"):
        count_parameters("acme/not-cached")
    with pytest.raises(ModelLoadError, match="No \\*.safetensors"):
        VLLMStepModel(tmp_path)  # refused before any engine starts


def test_training_evaluate_runs_policies_on_vllm_engines(vllm_ready):
    """`stepgraph evaluate --backend vllm`: JSON on stdout (vLLM logs go to stderr), a row per
    policy, and only the policy that needs log-probabilities warns that the engine has none."""
    import json
    import subprocess
    import sys

    from stepgraph.defaults import DEFAULT_POLICY_DIR, LOGITS_ONLY_POLICY_DIR

    command = [sys.executable, "-m", "stepgraph", "evaluate", "--backend", "vllm", "--splits", "test", "--problems", "3",
               "--policy", str(DEFAULT_POLICY_DIR), str(LOGITS_ONLY_POLICY_DIR)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)["test"]
    assert set(report) == {"target", "draft", str(DEFAULT_POLICY_DIR), str(LOGITS_ONLY_POLICY_DIR)}
    assert report["target"]["escalation_rate"] == 0.0 and report["draft"]["escalation_rate"] == 0.0  # the target alone
    assert done.stderr.count("RuntimeWarning: The policy was trained with 'api_confidence'") == 1
