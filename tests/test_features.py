"""Confidence features, math tokens, costs and answer checking."""

import math

import pytest

from stepgraph.answers import extract_boxed, is_correct
from stepgraph.costs import Prices, add_costs, call_cost, total_costs
from stepgraph.features import CONFIDENCE_SCHEMA, api_confidence, is_math_token, logit_confidence, observe
from stepgraph.models.base import StepOutput


@pytest.mark.parametrize("token", ["7", "12", "+", "=", "\\boxed", "{", "}", " 3", "Ġ42", "\\frac", "(", "3.5", "-"])
def test_math_tokens(token):
    assert is_math_token(token)


@pytest.mark.parametrize("token", ["the", " answer", "Ġso", "\n\n", " ", "", "x", ":", "Ċ"])
def test_not_math_tokens(token):
    assert not is_math_token(token)


def _step(tokens, max_logits, top1) -> StepOutput:
    top = [[(t, math.log(p)), ("?", math.log((1 - p) / 2))] for t, p in zip(tokens, top1)]
    return StepOutput("".join(tokens), tokens, max_logits, top, 10, 4, len(tokens), False, "m")


def test_confidences_use_only_math_tokens():
    step = _step(["So", " 3", "+", "4", "=", "7", "\n\n"], [1.0, 10.0, 12.0, 8.0, 14.0, 6.0, 2.0], [0.1, 0.9, 0.99, 0.6, 0.95, 0.8, 0.2])
    assert logit_confidence(step) == pytest.approx((10 + 12 + 8 + 14 + 6) / 5)
    assert api_confidence(step) == pytest.approx(0.6)


def test_step_without_math_tokens_uses_every_token():
    step = _step(["so", " yes"], [2.0, 4.0], [0.5, 0.7])
    assert logit_confidence(step) == pytest.approx(3.0)
    assert api_confidence(step) == pytest.approx(0.5)


def test_missing_logits_give_none_not_a_crash():
    step = StepOutput("1+1=2", ["1", "+"], None, [], 3, 0, 2, False, "api-model")
    assert logit_confidence(step) is None and api_confidence(step) is None
    obs = observe(step, step_index=2, escalations=1)
    assert obs["logit_confidence"] is None and obs["step_index"] == 2.0
    assert all(math.isnan(v) for v in CONFIDENCE_SCHEMA.vector(obs)[:2])


def test_observation_follows_the_schema():
    step = _step(["\\boxed", "{", "7", "}"], [9.0] * 4, [0.9] * 4)
    obs = observe(step, step_index=3, escalations=2, difficulty=0.5)
    assert list(obs) == list(CONFIDENCE_SCHEMA.names)
    assert obs["is_final"] == 1.0 and obs["step_tokens"] == 4.0 and obs["difficulty"] == 0.5


def test_call_cost_counts_generated_prefill_and_dollars():
    step = StepOutput("x", ["x"] * 10, None, [], prompt_tokens=100, cached_tokens=60, generated_tokens=10, finished=False, model="m")
    cost = call_cost(step, n_params=1_000, prices=Prices(input=1.0, cached_input=0.5, output=2.0))
    assert cost["flops"] == 2 * 1_000 * 10 and cost["prefill_flops"] == 2 * 1_000 * 40
    assert cost["usd"] == pytest.approx((40 * 1.0 + 60 * 0.5 + 10 * 2.0) / 1e6)
    merged = add_costs({"0": cost}, {"0": cost, "1": cost})
    assert merged["0"]["flops"] == 2 * cost["flops"] and merged["1"]["calls"] == 1
    assert total_costs(merged)["calls"] == 3


def test_default_prices_are_gpt_4_1_mini():
    assert Prices() == Prices(input=0.40, cached_input=0.10, output=1.60)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("so \\boxed{42}.", "42"), ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), ("no answer", None), ("\\boxed{4", None)],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_is_correct_uses_math_verify():
    assert is_correct("\\frac{1}{2}", "0.5")
    assert is_correct("42", "42.0")
    assert not is_correct("41", "42")
    assert not is_correct(None, "42") and not is_correct("", "42")


def test_is_correct_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(is_correct, "42", "42").result()
        assert not pool.submit(is_correct, "41", "42").result()
