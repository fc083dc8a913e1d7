"""The vLLM engine's per-token statistics from a RequestOutput, without starting vLLM (its shapes, faked)."""

from types import SimpleNamespace

import pytest

from stepgraph.models.vllm_engine import VLLMStepModel


def _model(mode: str) -> VLLMStepModel:
    model = object.__new__(VLLMStepModel)  # no engine: only the conversion of its output is exercised
    model.name, model.top_k, model.logprobs_mode = "draft", 2, mode
    model.tokenizer = SimpleNamespace(decode=lambda ids: {1: "7", 2: "8", 3: "=", 4: "\n\n"}[ids[0]])
    return model


def _output() -> SimpleNamespace:
    lp = lambda value, rank: SimpleNamespace(logprob=value, rank=rank)
    # the "8" was sampled off the top choice "7": vLLM lists it beside the top k with its own rank
    positions = [{1: lp(-0.1, 1), 2: lp(-2.4, 2)}, {3: lp(-0.01, 1), 1: lp(-5.0, 2)}, {2: lp(-0.2, 1), 1: lp(-1.8, 2)},
                 {4: lp(-0.05, 1), 3: lp(-4.0, 2)}]
    completion = SimpleNamespace(token_ids=[2, 3, 2, 4], logprobs=positions, text="8=8\n\n", finish_reason="stop",
                                 stop_reason="\n\n")
    return SimpleNamespace(outputs=[completion], num_cached_tokens=0)


def test_the_sampled_tokens_logprobs_come_from_vllms_rows():
    out = _model("raw_logprobs")._step_output(_output(), prompt_tokens=12)
    assert out.token_logprobs == pytest.approx([-2.4, -0.01, -0.2, -0.05])
    assert out.top_logprobs[0][0] == ("7", -0.1)  # the top choice, which api_confidence reads


def test_raw_logits_mode_reports_no_sampled_logprobs():
    out = _model("raw_logits")._step_output(_output(), prompt_tokens=12)
    assert out.token_logprobs is None and out.max_logits == pytest.approx([-0.1, -0.01, -0.2, -0.05])
