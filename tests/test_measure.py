"""Measuring testbed models (stepgraph.testbed.measure): batched greedy answers, per-step verdicts, the v2 report."""

from __future__ import annotations

import pytest

from stepgraph.models.base import StepOutput
from stepgraph.models.local import TransformersStepModel
from stepgraph.testbed import DRAFT_MODEL_DIR, wordproblems
from stepgraph.testbed import testbed_task as shipped_task
from stepgraph.testbed.measure import batched_solutions, judge, load_hf, mean_token_probability, summarize


def scripted(text: str, confidence: float) -> StepOutput:
    return StepOutput(text=text, tokens=[text], max_logits=[confidence], top_logprobs=[[]], prompt_tokens=0, cached_tokens=0,
                      generated_tokens=1, finished=False, model="m", token_logprobs=[confidence - 10.0])


def test_batched_greedy_answers_equal_stepwise_greedy_generation():
    problems = shipped_task().generate("test", 6, seed=3)
    model, tokenizer = load_hf(DRAFT_MODEL_DIR)
    batched = batched_solutions(model, tokenizer, [p.question for p in problems], batch_size=4)  # two batches, left-padded
    stepwise = TransformersStepModel(DRAFT_MODEL_DIR)
    for problem, outputs in zip(problems, batched):
        assert outputs and shipped_task().is_final_step(outputs[-1].text) or len(outputs) == 8
        steps: list[str] = []
        for out in outputs:
            alone = stepwise.generate_step(problem.question, steps, temperature=0)
            assert (out.text, out.tokens, out.finished, out.prompt_tokens) == (alone.text, alone.tokens, alone.finished, alone.prompt_tokens)
            assert out.max_logits == pytest.approx(alone.max_logits, abs=1e-3)
            assert out.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-3)
            assert [t for t, _ in out.top_logprobs[0]] == [t for t, _ in alone.top_logprobs[0]]
            steps.append(alone.text)


def test_steps_are_judged_on_the_models_own_prior_steps_and_summarized():
    problem = next(p for p in wordproblems.generate("test", 50, seed=1) if len(p.derived) >= 2)
    right = judge(wordproblems, problem, [scripted(s, 5.0) for s in problem.steps], seconds=0.5)
    assert right.correct and right.verdicts == [True] * len(problem.steps)
    # A slip in the first step, then the gold steps: they ignore the slipped value the model wrote, so
    # each is wrong given the model's own steps, though the boxed answer is the right number.
    slipped = problem.steps[0].replace(f"= {problem.derived[0].value}", f"= {problem.derived[0].value + 1}")
    gold_after_slip = judge(wordproblems, problem, [scripted(slipped, 1.0), *(scripted(s, 5.0) for s in problem.steps[1:])], seconds=0.5)
    assert gold_after_slip.correct and gold_after_slip.verdicts[0] is False and gold_after_slip.verdicts[-1] is False
    wrong = judge(wordproblems, problem, [scripted(slipped, 1.0), scripted(f"\\boxed{{{problem.answer + 1}}}", 5.0)], seconds=0.5)
    assert wrong.answer == problem.answer + 1 and not wrong.correct and wrong.verdicts == [False, False]
    report = summarize("m", 10, [right, wrong])
    assert report["accuracy"] == 0.5 and report["wrong_steps"] == 2
    assert report["step_accuracy"] == pytest.approx(len(problem.steps) / (len(problem.steps) + 2), abs=1e-4)
    # The right steps score 5, the slip 1, the wrong box 5: half the wrong steps rank below every right one.
    assert report["auroc_low_confidence_is_wrong"] == 0.75 and report["auroc_low_token_probability_is_wrong"] == 0.75
    assert summarize("m", 10, [right])["auroc_low_confidence_is_wrong"] is None  # no wrong step: nothing to separate
    assert mean_token_probability(scripted("x", 10.0)) == 1.0
