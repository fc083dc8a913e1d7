"""The LangChain chat-model backend on scripted chat models (the OpenAI cloud cannot be reached here)."""

import math
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from stepgraph.context import RouterContext
from stepgraph.errors import ModelOutputError
from stepgraph.graph import build_graph
from stepgraph.models.chat import ChatStepModel, is_transient
from stepgraph.routing.gates import ConfidenceThresholdGate

QUESTION = "Ann has 12 coins. She gets 7 more. She gives away 5. How many coins does she have?"
SOLUTION = ["12+7=19", "19-5=14", "\\boxed{14}"]


class ServerError(Exception):
    status_code = 503


class ScriptedChat(BaseChatModel):
    """Answers with the step after the ones it was shown, with per-character logprobs; may fail first."""

    top1: float = 0.99
    failures: int = 0
    with_logprobs: bool = True
    seen: list = Field(default_factory=list)
    kwargs_seen: list = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-chat"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.seen.append(messages)
        self.kwargs_seen.append({"stop": stop, **kwargs})
        if self.failures > 0:
            self.failures -= 1
            raise ServerError("upstream unavailable")
        last = messages[-1]
        done = last.content.count("\n\n") if last.type == "ai" else sum(s in last.content for s in SOLUTION)
        text = SOLUTION[min(done, len(SOLUTION) - 1)]
        meta: dict[str, Any] = {"finish_reason": "stop", "stop_reason": "\n\n"}
        if self.with_logprobs:
            lp = math.log(self.top1)
            meta["logprobs"] = {"content": [{"token": c, "logprob": lp, "top_logprobs": [{"token": c, "logprob": lp},
                                                                                           {"token": "?", "logprob": -5.0}]}
                                            for c in text]}
        message = AIMessage(text, response_metadata=meta,
                            usage_metadata={"input_tokens": 40, "output_tokens": len(text), "total_tokens": 40 + len(text),
                                            "input_token_details": {"cache_read": 16}})
        return ChatResult(generations=[ChatGeneration(message=message)])


def test_continue_mode_sends_a_partial_assistant_message_and_vllm_flags():
    chat = ScriptedChat()
    model = ChatStepModel(chat, n_params=1000, name="m", continue_final_message=True)
    out = model.generate_step(QUESTION, ["12+7=19"], temperature=0.3, seed=5)
    assert out.text == "19-5=14"
    last = chat.seen[-1][-1]
    assert last.type == "ai" and last.content == "12+7=19\n\n"
    sent = chat.kwargs_seen[-1]
    assert sent["stop"] == ["\n\n"] and sent["seed"] == 5 and sent["temperature"] == 0.3
    assert sent["extra_body"] == {"continue_final_message": True, "add_generation_prompt": False}


def test_prompt_mode_puts_previous_steps_in_the_user_turn():
    chat = ScriptedChat()
    model = ChatStepModel(chat, n_params=1000, system_prompt="Reason step by step.")
    out = model.generate_step(QUESTION, ["12+7=19"])
    sent = chat.seen[-1]
    assert [m.type for m in sent] == ["system", "human"] and "12+7=19" in sent[-1].content
    assert "extra_body" not in chat.kwargs_seen[-1]
    assert out.text == "19-5=14"


def test_statistics_and_usage_come_from_the_response():
    out = ChatStepModel(ScriptedChat(top1=0.8), n_params=1000).generate_step(QUESTION, [])
    assert out.tokens == list("12+7=19") and out.generated_tokens == 7
    assert out.prompt_tokens == 40 and out.cached_tokens == 16
    assert out.max_logits is None and math.exp(out.top_logprobs[0][0][1]) == pytest.approx(0.8)
    assert not out.finished


class SlippedChat(ScriptedChat):
    """Reports each token's own log-probability apart from the top-1's: the "7" was sampled off the top."""

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        result = super()._generate(messages, stop, run_manager, **kwargs)
        for entry in result.generations[0].message.response_metadata["logprobs"]["content"]:
            if entry["token"] == "7":
                entry["logprob"] = -2.3  # the API's logprob of the sampled token; top_logprobs[0] stays the top choice
        return result


def test_the_sampled_tokens_own_logprobs_are_kept():
    out = ChatStepModel(SlippedChat(top1=0.8), n_params=1000).generate_step(QUESTION, [])
    assert out.tokens == list("12+7=19")
    expected = [math.log(0.8)] * 7
    expected[3] = -2.3
    assert out.token_logprobs == pytest.approx(expected)
    assert out.top_logprobs[3][0][1] == pytest.approx(math.log(0.8))  # api_confidence alone would miss the slip
    logits = ChatStepModel(ScriptedChat(), n_params=1000, logprobs_are_logits=True).generate_step(QUESTION, [])
    assert logits.token_logprobs is None  # raw logits are not log-probabilities
    bare = ChatStepModel(ScriptedChat(with_logprobs=False), n_params=1000).generate_step(QUESTION, [])
    assert bare.token_logprobs is None


def test_transient_errors_are_retried_then_reported():
    chat = ScriptedChat(failures=2)
    model = ChatStepModel(chat, n_params=1000, max_retries=2, backoff_seconds=0.001)
    assert model.generate_step(QUESTION, []).text == "12+7=19" and len(chat.seen) == 3
    broken = ChatStepModel(ScriptedChat(failures=5), n_params=1000, max_retries=1, backoff_seconds=0.001)
    with pytest.raises(ModelOutputError, match="after 2 attempt"):
        broken.generate_step(QUESTION, [])
    assert is_transient(TimeoutError()) and is_transient(ServerError()) and not is_transient(ValueError("bad request"))


def test_missing_logprobs_error_or_fallback():
    chat = ScriptedChat(with_logprobs=False)
    with pytest.raises(ModelOutputError, match="no log-probabilities"):
        ChatStepModel(chat, n_params=1000, require_logprobs=True).generate_step(QUESTION, [])
    fallback = ChatStepModel(chat, n_params=1000)
    # Without confidence, the API-confidence gate escalates every draft (documented fallback).
    result = build_graph([fallback, ChatStepModel(ScriptedChat(), n_params=8000)],
                         ConfidenceThresholdGate(0.9, feature="api_confidence")).invoke({"question": QUESTION})
    assert all(s["escalated"] for s in result["steps"]) and result["answer"] == "14"


def test_graph_routes_between_two_chat_models_on_api_confidence():
    unsure = ChatStepModel(ScriptedChat(top1=0.5), n_params=1000, name="small")
    sure = ChatStepModel(ScriptedChat(top1=0.99), n_params=8000, name="large")
    gate = ConfidenceThresholdGate(0.9, feature="api_confidence")
    escalated = build_graph([unsure, sure], gate).invoke({"question": QUESTION}, context=RouterContext(seed=1))
    kept = build_graph([sure, unsure], gate).invoke({"question": QUESTION}, context=RouterContext(seed=1))
    assert escalated["escalations"] == 3 and kept["escalations"] == 0
    assert escalated["costs"]["0"]["cached_tokens"] == 3 * 16 and escalated["answer"] == kept["answer"] == "14"
