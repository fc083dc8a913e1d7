"""Confidence features, math tokens, costs and answer checking."""

import math
import time

import pytest

from stepgraph.answers import extract_boxed, is_correct
from stepgraph.features import (
    CONFIDENCE_SCHEMA,
    FEATURE_SCHEMA,
    FEATURE_SCHEMA_V2,
    FEATURE_SCHEMA_V3,
    SCHEMAS,
    TEXT_LIMIT,
    api_confidence,
    arithmetic_error,
    bounded,
    is_math_token,
    logit_confidence,
    observe,
    result_digit_min,
    sampled_logprobs,
    top_k_summaries,
    ungrounded_operands,
    unused_question_numbers,
)
from stepgraph.models.base import StepOutput
from stepgraph.models.costs import Prices, add_costs, call_cost, total_costs


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
    assert list(obs) == list(FEATURE_SCHEMA.names)
    assert FEATURE_SCHEMA.names[: len(CONFIDENCE_SCHEMA.names)] == CONFIDENCE_SCHEMA.names  # v1 policies read a prefix
    assert set(FEATURE_SCHEMA_V2.names) < set(FEATURE_SCHEMA_V3.names) < set(FEATURE_SCHEMA.names)  # older policies read theirs
    assert {(s.name, s.version) for s in SCHEMAS.values()} == {("stepgraph.confidence", v) for v in (1, 2, 3, 4)}
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


# --- schema v2: sampled-token probabilities, per-token summaries, grounding, stepwise -----------------


def _v2_step(tokens, sampled, top=None, text=None) -> StepOutput:
    top = top if top is not None else [[(t, lp), ("?", -6.0)] for t, lp in zip(tokens, sampled)]
    return StepOutput(text if text is not None else "".join(tokens).strip(), tokens, None, top, 10, 0, len(tokens), False, "m",
                      token_logprobs=sampled)


def test_sampled_token_probability_counts_math_tokens_only():
    step = _v2_step(["So", " 3", "+", "4", "=", "7", "\n\n"], [-3.0, -0.1, -0.2, -1.5, -0.1, -0.4, -2.0])
    total, least = sampled_logprobs(step)
    assert total == pytest.approx(-0.1 - 0.2 - 1.5 - 0.1 - 0.4) and least == pytest.approx(-1.5)


def test_a_slip_off_the_top_choice_shows_in_the_sampled_probability_not_in_api_confidence():
    top = [[("7", math.log(0.9)), ("8", math.log(0.1))]] * 3
    confident = _v2_step(["7", "=", "7"], [math.log(0.9)] * 3, top)
    slipped = _v2_step(["8", "=", "7"], [math.log(0.1), math.log(0.9), math.log(0.9)], top)
    assert api_confidence(confident) == api_confidence(slipped)
    assert sampled_logprobs(slipped)[1] == pytest.approx(math.log(0.1))
    assert sampled_logprobs(confident)[1] == pytest.approx(math.log(0.9))


def test_missing_or_misaligned_sampled_logprobs_give_none():
    without = StepOutput("3+4=7", ["3", "+", "4", "=", "7"], None, [], 3, 0, 5, False, "api")
    misaligned = _v2_step(["3", "+", "4"], [-0.1, -0.1])
    for step in (without, misaligned):
        assert sampled_logprobs(step) == (None, None) and result_digit_min(step) is None
    obs = observe(without, step_index=0, escalations=0, question="Ann has 3 coins and finds 4.")
    assert obs["sampled_logprob_sum"] is None and obs["margin_min"] is None and obs["entropy_max"] is None
    assert all(math.isnan(v) for v in FEATURE_SCHEMA.vector(obs)[7:11])


def test_old_step_outputs_without_sampled_logprobs_still_load():
    data = StepOutput("x", ["x"], None, [[("x", -0.1)]], 1, 0, 1, False, "m").to_dict()
    del data["token_logprobs"]  # a stored candidate from before the field existed
    assert StepOutput.from_dict(data).token_logprobs is None


def test_margin_and_entropy_summaries():
    top = [[("3", math.log(0.5)), ("4", math.log(0.3))], [("=", 0.0)], [("7", math.log(0.9)), ("1", math.log(0.1))]]
    step = _v2_step(["3", "=", "7"], [math.log(0.5), 0.0, math.log(0.9)], top)
    margin, entropy = top_k_summaries(step)
    assert margin == pytest.approx(math.log(0.5 / 0.3))
    expected = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))  # the rest of the mass as one outcome
    assert entropy == pytest.approx(expected)


def test_weakest_result_digit_reads_the_digits_after_the_last_equals():
    step = _v2_step(["1", "2", "+", "3", "=", "1", "5"], [-2.0, -0.1, -0.1, -0.1, -0.1, -0.3, -0.7])
    assert result_digit_min(step) == pytest.approx(-0.7)  # the -2.0 is an operand, not the result
    assert result_digit_min(_v2_step(["\\boxed{", "7", "}"], [-0.1, -0.2, -0.1])) is None


def test_non_math_step_uses_every_token_and_has_nothing_to_ground():
    step = _v2_step(["Let", " us", " add"], [-0.5, -1.0, -0.2])
    assert sampled_logprobs(step) == (pytest.approx(-1.7), -1.0)
    assert ungrounded_operands("Ann has 3 coins.", [], step.text) == 0.0 and arithmetic_error(step.text) is None


@pytest.mark.parametrize(("prior", "step", "missing"), [
    ([], "1200 * 2.5 = 3000", 0),  # "1,200" and "$2.50" by value
    ([], "1,300 * 2.50 = 3,250", 1),  # 1,300 is in neither
    (["1,200 * 2.50 = 3,000"], "3,000 - 500 = 2,500", 0),  # an earlier result, a question number
    ([], "1200 * 2.5 = 3000, then 3000 - 45 = 2955", 1),  # a result is known later in the step; 45 is not
    ([], "Half of 1,200 is 1200 / 2 = 600", 0),  # "half" states the 2
])
def test_grounding_counts_operands_found_neither_in_the_question_nor_before(prior, step, missing):
    question = "Mia sold 1,200 apples at $2.50 each, then spent 500 dollars. She gave half away."
    assert ungrounded_operands(question, prior, step) == missing


@pytest.mark.parametrize(("prior", "step", "unused"), [
    ([], "Mia sold 1200 * 2.5 = 3000 dollars of apples.", 2),  # 500 and 45 are still to use; "1,200" and "$2.50" by value
    (["1,200 * 2.50 = 3,000"], "3,000 - 500 = 2,500", 1),  # an earlier step used two, this one a third
    (["1,200 * 2.50 = 3,000", "3,000 - 500 = 2,500"], "\\boxed{2500}", 1),  # answered, with 45 never used
    (["1200 * 2.5 = 3000", "3000 - 500 - 45 = 2455"], "\\boxed{2455}", 0),
    ([], "She gave half away.", 4),  # number words are not counted: only what the question writes in digits
])
def test_unused_question_numbers_counts_the_question_numbers_no_step_has_written(prior, step, unused):
    question = "Mia sold 1,200 apples at $2.50 each, then spent 500 dollars and 45 cents. She gave half away."
    assert unused_question_numbers(question, prior, step) == unused


def test_unused_question_numbers_is_observed_only_with_the_question():
    step = _v2_step(["\\boxed{", "7", "}"], [-0.1] * 3)
    assert observe(step, step_index=2, escalations=0, question="Ann has 3 pens and 4 more.", prior_steps=["3 + 4 = 7"],
                   )["unused_question_numbers"] == 0.0
    assert observe(step, step_index=2, escalations=0, question="Ann has 3 pens, 4 more and 9 cups.",
                   prior_steps=["3 + 4 = 7"])["unused_question_numbers"] == 1.0
    assert observe(step, step_index=2, escalations=0)["unused_question_numbers"] is None


def test_prose_token_confidences_read_the_words_and_leave_out_math_tokens_and_whitespace():
    # "more" was the unsure choice (the quantity); the digits and "=" are math tokens, " " and the step break whitespace.
    tokens = ["Ann", " has", " ", "3", " +", " 4", " =", " 7", " more", " pens", ".", "\n\n"]
    sampled = [-0.2, -0.1, -0.05, -0.3, -0.4, -0.1, -0.1, -2.5, -3.0, -0.2, -0.1, -0.6]
    obs = observe(_v2_step(tokens, sampled), step_index=0, escalations=0)
    assert obs["word_sampled_logprob_sum"] == pytest.approx(-0.2 - 0.1 - 3.0 - 0.2)  # Ann, has, more, pens
    assert obs["word_sampled_logprob_min"] == pytest.approx(-3.0)
    assert obs["word_margin_min"] == pytest.approx(-3.0 + 6.0)  # "more"'s gap to the runner-up, the smallest of the four
    assert obs["sampled_logprob_min"] == pytest.approx(-2.5)  # the math tokens' own minimum is unchanged
    only_math = observe(_v2_step(["\\boxed{", "7", "}", "\n\n"], [-0.1] * 4), step_index=1, escalations=0)
    assert only_math["word_sampled_logprob_min"] is None and only_math["word_margin_min"] is None  # no prose token
    no_logprobs = observe(StepOutput("Ann has 7.", ["Ann", " has", " 7", "."], None, [], 4, 0, 4, False, "m"), step_index=0,
                          escalations=0)
    assert no_logprobs["word_sampled_logprob_sum"] is None and no_logprobs["word_margin_min"] is None


@pytest.mark.parametrize(("text", "error"), [
    ("84*3=242", 1.0), ("84*3=252", 0.0), ("So 1,200 + 300 = 1,500 apples", 0.0), ("16 - 3 - 4 = 9 eggs. 9 * 2 = $18", 0.0),
    ("2 x 3 = 7", 1.0), ("(2+3)*4=20.", 0.0), ("x = 5", None), ("\\boxed{5}", None), ("1/0=3", None),
    # money is checked too (the currency signs used to end the expression, so no money sum was ever checked)
    ("Pete has $68 - $25 = $4 more than Hank.", 1.0), ("Pete has $68 - $25 = $43 more.", 0.0),
    ("Ruby has $84, so Milo has $84 - $67 = $27.", 1.0), ("She pays $1,200 + $300 = $1,500.", 0.0), ("£3 × 4 = £12", 0.0),
])
def test_arithmetic_check(text, error):
    assert arithmetic_error(text) == error


def test_stepwise_features_follow_the_previous_step():
    step = _v2_step(["5", "=", "5"], [-0.1] * 3)
    first = observe(step, step_index=0, escalations=0, question="q")
    assert first["previous_escalated"] is None and first["previous_sampled_logprob_min"] is None
    later = observe(step, step_index=1, escalations=1, question="q",
                    previous={"observation": {"sampled_logprob_min": -2.5}, "escalated": True})
    assert later["previous_escalated"] == 1.0 and later["previous_sampled_logprob_min"] == -2.5
    assert observe(step, step_index=1, escalations=0)["ungrounded_operands"] is None  # no question given


def _long_step(chars: int) -> StepOutput:
    """A runaway step: a calculation repeated ``chars`` characters long, in 8-character tokens."""
    text = ("12 + 30 " * (chars // 8 + 1))[:chars] + "= 42"
    tokens = [text[i:i + 8] for i in range(0, len(text), 8)]
    top = [[(t, -0.1), ("?", -2.5)] for t in tokens]
    return StepOutput(text, tokens, [9.0] * len(tokens), top, 10, 0, len(tokens), False, "m", token_logprobs=[-0.1] * len(tokens))


def _observe_seconds(step: StepOutput) -> float:
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        observe(step, step_index=0, escalations=0, question="Ann has 12 coins and 30 more.", prior_steps=["12 + 30 = 42"])
        best = min(best, time.perf_counter() - start)
    return best


def test_a_long_step_is_observed_in_linear_time():
    """Issue 26.1: the arithmetic check's pattern was quadratic (100k characters took minutes, 1M never ended)."""
    start = time.perf_counter()
    observation = observe(_long_step(1_000_000), step_index=0, escalations=0, question="Ann has 12 coins and 30 more.")
    assert time.perf_counter() - start < 2.0
    assert observation["arithmetic_error"] is None  # the bounded head holds no "=": nothing to check
    assert observation["ungrounded_operands"] == 0.0
    short, long = _observe_seconds(_long_step(10_000)), _observe_seconds(_long_step(200_000))
    assert long <= 40 * short, (short, long)  # 20x the text: linear (with slack for a busy machine), not 400x


def test_text_features_read_a_bounded_head_cut_at_a_space():
    text = "2 + 3 = 5 " + "7 " * TEXT_LIMIT + "2 + 2 = 5"
    assert len(bounded(text)) <= TEXT_LIMIT and bounded(text).endswith("7")
    assert arithmetic_error(text) == 0.0  # the wrong sum past the limit is not read
    assert bounded("short = 1") == "short = 1"
    assert arithmetic_error("1+" * 3000 + "1 = 3001") is None  # too deep to evaluate: not checkable, no crash
