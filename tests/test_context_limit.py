"""A run that outgrows a model's context window stops with the steps so far (stop_reason ``context_limit``)."""

from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from scripted import ScriptedModel

from stepgraph.cli import main
from stepgraph.context import RouterContext
from stepgraph.errors import BadQuestionError, ContextLimitError
from stepgraph.graph import build_graph
from stepgraph.models.chat import ChatStepModel
from stepgraph.routing.gates import AlwaysDraftGate, AlwaysTargetGate
from stepgraph.testbed import load_pair


class Windowed(ScriptedModel):
    """A scripted model with a context window of ``window`` prompt tokens, as the real backends check it."""

    def __init__(self, name: str, window: int, **kwargs: Any) -> None:
        super().__init__(name, 1000, ["a step"], **kwargs)
        self.window = window

    def generate_step(self, question: str, steps: Sequence[str], **kwargs: Any):
        prompt_tokens = len(question) + sum(len(s) + 2 for s in steps)
        if prompt_tokens > self.window:
            raise ContextLimitError(f"The prompt has {prompt_tokens} tokens; {self.name} handles at most {self.window}.")
        return super().generate_step(question, steps, **kwargs)


def test_run_stops_at_the_context_limit_and_keeps_the_paid_steps():
    draft = Windowed("draft", window=4 + 3 * 8)  # "four" + three steps of "a step\n\n" fit; a fourth does not
    graph = build_graph([draft, Windowed("target", window=10_000)], AlwaysDraftGate())
    result = graph.invoke({"question": "four"}, context=RouterContext(max_steps=100))
    assert result["stop_reason"] == "context_limit" and result["answer"] is None
    assert [s["text"] for s in result["steps"]] == ["a step"] * 4
    assert result["costs"]["0"]["calls"] == 4 and result["totals"]["output_tokens"] == 4 * 7


def test_escalation_past_the_strong_models_window_stops_without_keeping_the_rejected_draft():
    graph = build_graph([Windowed("draft", window=10_000), Windowed("target", window=4 + 8)], AlwaysTargetGate())
    result = graph.invoke({"question": "four"}, context=RouterContext(max_steps=100))
    assert result["stop_reason"] == "context_limit"
    assert [s["tier"] for s in result["steps"]] == [1, 1]  # the third step's draft was rejected, its rewrite did not fit
    assert result["costs"]["0"]["calls"] == 3 and result["costs"]["1"]["calls"] == 2  # the rejected draft is still paid


def test_a_question_too_long_for_the_model_is_a_bad_question():
    graph = build_graph([Windowed("draft", window=3), Windowed("target", window=3)], AlwaysDraftGate())
    with pytest.raises(BadQuestionError, match="cannot take this question"):
        graph.invoke({"question": "four"})


def test_shipped_pair_stops_at_its_window_off_template():
    graph = build_graph(load_pair(), AlwaysDraftGate())
    result = graph.invoke({"question": "hi"}, context=RouterContext(max_steps=1000, max_step_tokens=1))
    assert result["stop_reason"] == "context_limit" and len(result["steps"]) > 16


def test_cli_prints_the_steps_of_a_run_cut_at_the_context_limit(capsys):
    code = main(["solve", "hi", "--gate", "draft", "--max-steps", "1000", "--max-step-tokens", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "stop: context_limit" in out and "[20] tier 0" in out


class TooLong(BaseChatModel):
    """An OpenAI-compatible server refusing every prompt past ``accepted`` steps, as OpenAI words it."""

    accepted: int

    @property
    def _llm_type(self) -> str:
        return "too-long"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        if messages[-1].content.count("\n\n") >= self.accepted:
            import httpx
            import openai

            response = httpx.Response(400, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))
            body = {"message": "This model's maximum context length is 64 tokens.", "code": "context_length_exceeded"}
            raise openai.BadRequestError("Error code: 400 - context_length_exceeded", response=response, body=body)
        return ChatResult(generations=[ChatGeneration(message=AIMessage("x + 1 = 2"))])


def test_api_context_length_errors_stop_the_run_too():
    pytest.importorskip("openai")  # the real client's error type (the "openai" extra)
    tiers = [ChatStepModel(TooLong(accepted=2), n_params=10, continue_final_message=True, max_retries=0),
             ChatStepModel(TooLong(accepted=100), n_params=100, continue_final_message=True)]
    result = build_graph(tiers, AlwaysDraftGate()).invoke({"question": "q"}, context=RouterContext(max_steps=10))
    assert result["stop_reason"] == "context_limit" and len(result["steps"]) == 2

