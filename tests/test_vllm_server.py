"""The real vLLM OpenAI-compatible server behind langchain-openai's ChatOpenAI, as users run it.

Two servers for this module, started one after the other on 127.0.0.1: the draft reports raw
logits (``--logprobs-mode raw_logits``, STEER's score), the target log-probabilities (as the
OpenAI API does). Every number is checked against the local transformers backend.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("openai", reason="the openai extra is not installed (pip install '.[openai]')")
ChatOpenAI = pytest.importorskip("langchain_openai", reason="the openai extra is not installed (pip install '.[openai]')").ChatOpenAI

from langgraph.checkpoint.memory import InMemorySaver
from same_routing import GREEDY, assert_routes_like

from stepgraph.defaults import resolve_gate
from stepgraph.errors import ModelOutputError
from stepgraph.features import api_confidence, logit_confidence
from stepgraph.graph import build_graph
from stepgraph.models.chat import ChatStepModel
from stepgraph.models.local import TransformersStepModel
from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR
from stepgraph.testbed import testbed_task as shipped_task

pytestmark = pytest.mark.integration  # real vLLM servers on 127.0.0.1

PROBLEMS = shipped_task().generate("test", 4, seed=33)


def chat(url: str, name: str, **kwargs) -> ChatOpenAI:
    options = {"logprobs": True, "top_logprobs": 5, "max_retries": 0, "timeout": 60, **kwargs}
    return ChatOpenAI(base_url=url, api_key="EMPTY", model=name, **options)


@pytest.fixture(scope="module")
def tiers(servers):
    draft = ChatStepModel(chat(servers["draft"].url, "draft"), n_params=TransformersStepModel(DRAFT_MODEL_DIR).n_params,
                          continue_final_message=True, logprobs_are_logits=True, require_logprobs=True)
    target = ChatStepModel(chat(servers["target"].url, "target"), n_params=TransformersStepModel(TARGET_MODEL_DIR).n_params,
                           continue_final_message=True, require_logprobs=True)
    return draft, target


@pytest.fixture(scope="module")
def local():
    return TransformersStepModel(DRAFT_MODEL_DIR), TransformersStepModel(TARGET_MODEL_DIR)


def test_server_steps_and_features_equal_transformers(tiers, local):
    question, steps = PROBLEMS[0].question, []
    for _ in range(6):
        outputs = [(m.generate_step(question, steps, temperature=0), ref.generate_step(question, steps, temperature=0))
                   for m, ref in zip(tiers, local)]
        for ours, theirs in outputs:
            assert (ours.text, ours.tokens, ours.prompt_tokens, ours.generated_tokens, ours.finished) == \
                (theirs.text, theirs.tokens, theirs.prompt_tokens, theirs.generated_tokens, theirs.finished)
        (draft_v, draft_t), (target_v, target_t) = outputs
        assert draft_v.max_logits == pytest.approx(draft_t.max_logits, abs=1e-4)
        assert logit_confidence(draft_v) == pytest.approx(logit_confidence(draft_t), abs=1e-4)
        assert api_confidence(target_v) == pytest.approx(api_confidence(target_t), abs=1e-5)
        steps.append(target_t.text)
        if target_t.finished:
            break
    assert steps[-1].startswith("\\boxed{") and target_v.finished


def test_question_logprob_through_the_server_equals_transformers(tiers, local):
    question = PROBLEMS[0].question
    assert tiers[0].question_logprob(question) is None  # a raw-logit server's prompt scores are logits
    ours, theirs = tiers[1].question_logprob(question), local[1].question_logprob(question)
    assert ours.mean_logprob == pytest.approx(theirs.mean_logprob, abs=1e-4) and ours.question_tokens == theirs.question_tokens


def test_cached_prompt_tokens_come_back_in_usage(tiers):
    draft = tiers[0]
    first = draft.generate_step(PROBLEMS[1].question, [], temperature=0)
    second = draft.generate_step(PROBLEMS[1].question, [first.text], temperature=0)
    assert 32 <= second.cached_tokens < second.prompt_tokens


def test_graph_through_servers_routes_exactly_like_transformers(tiers, local):
    assert_routes_like(tiers, local, [p.question for p in PROBLEMS[:2]])


def test_openai_prompt_mode_against_the_server(servers, local):
    """The mode for servers that cannot continue a message: previous steps go into the user turn."""
    api = ChatStepModel(chat(servers["target"].url, "target"), n_params=1, require_logprobs=True)
    question = PROBLEMS[2].question
    first, reference = api.generate_step(question, [], temperature=0), local[1].generate_step(question, [], temperature=0)
    assert first.text == reference.text  # no steps yet: the same prompt as a local model's
    assert api_confidence(first) == pytest.approx(api_confidence(reference), abs=1e-5)
    assert first.max_logits is None and not first.finished
    later = api.generate_step(question, [first.text], temperature=0)
    assert later.top_logprobs and later.prompt_tokens > first.prompt_tokens + len(question) // 8


def test_a_hung_server_times_out_is_retried_then_reported(servers):
    """SIGSTOP freezes the real server: connections are accepted, nothing answers."""
    server = servers["draft"]
    model = ChatStepModel(chat(server.url, "draft", timeout=0.5), n_params=1, continue_final_message=True,
                          max_retries=2, backoff_seconds=0.01)
    os.killpg(server.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ModelOutputError, match="after 3 attempt.*Timeout"):
            model.generate_step(PROBLEMS[0].question, [])
        assert time.monotonic() - started < 15
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)
    assert model.generate_step(PROBLEMS[0].question, [], temperature=0).text  # served again once it resumes


def test_a_server_without_logprobs_errors_or_falls_back(servers):
    bare = chat(servers["draft"].url, "draft", logprobs=False, top_logprobs=None)
    with pytest.raises(ModelOutputError, match="no log-probabilities"):
        ChatStepModel(bare, n_params=1, continue_final_message=True, require_logprobs=True).generate_step(PROBLEMS[0].question, [])
    fallback = ChatStepModel(bare, n_params=1, continue_final_message=True, logprobs_are_logits=True)
    out = fallback.generate_step(PROBLEMS[0].question, [], temperature=0)
    assert out.text and logit_confidence(out) is None and api_confidence(out) is None
    target = ChatStepModel(chat(servers["target"].url, "target"), n_params=10, continue_final_message=True)
    result = build_graph([fallback, target], resolve_gate("threshold")).invoke({"question": PROBLEMS[0].question}, context=GREEDY)
    assert all(s["escalated"] for s in result["steps"])  # unknown confidence is low confidence


def test_server_killed_mid_run_fails_cleanly_and_keeps_the_trace(servers, tmp_path):
    from stepgraph.testbed.vllm_serving import serve

    with open(tmp_path / "doomed.log", "wb") as log, serve(DRAFT_MODEL_DIR, name="draft", log=log) as doomed:
        draft = ChatStepModel(chat(doomed.url, "draft"), n_params=1, continue_final_message=True, logprobs_are_logits=True,
                              max_retries=2, backoff_seconds=0.2)

        class KillsTheServerAfterOneStep:
            name, n_params = draft.name, draft.n_params

            def generate_step(self, question, steps, **kwargs):
                if steps:
                    os.killpg(doomed.process.pid, signal.SIGKILL)
                    doomed.process.wait(timeout=30)
                return draft.generate_step(question, steps, **kwargs)

        target = ChatStepModel(chat(servers["target"].url, "target"), n_params=10, continue_final_message=True)
        saver = InMemorySaver()
        config = {"configurable": {"thread_id": "server-killed"}}
        graph = build_graph([KillsTheServerAfterOneStep(), target], resolve_gate("draft"), checkpointer=saver)
        started = time.monotonic()
        with pytest.raises(ModelOutputError, match="after 3 attempt"):
            graph.invoke({"question": PROBLEMS[3].question}, config, context=GREEDY)
        assert time.monotonic() - started < 60
        assert len(graph.get_state(config).values["steps"]) == 1  # the step before the failure is kept


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")} | {"OMP_NUM_THREADS": "1"} | (env or {})
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def test_server_example_runs(servers):
    done = run_example("vllm_server.py", "--draft-url", servers["draft"].url, "--target-url", servers["target"].url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "answer: 42" in done.stdout and "tier 0:" in done.stdout


def test_openai_example_runs_against_an_openai_compatible_endpoint(servers):
    key = "sk-test-0123456789abcdef"
    done = run_example("openai_target.py", "--target-model", "target",
                       env={"OPENAI_BASE_URL": servers["target"].url, "OPENAI_API_KEY": key})
    assert done.returncode == 0, done.stderr[-2000:]
    # The target's steps came through the OpenAI client (whether the draft's are kept depends on the threshold and model).
    assert "answer:" in done.stdout and "target:" in done.stdout
    assert key not in done.stdout + done.stderr  # never logged
