"""The local transformers backend on the shipped models: step statistics, seeding, prefix cache."""

import json
import math

import pytest

from stepgraph.errors import ModelLoadError
from stepgraph.models.local import TransformersStepModel
from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR
from stepgraph.testbed import testbed_task as shipped_task

pytestmark = pytest.mark.slow  # loads the shipped models

QUESTION = shipped_task().generate("test", 1, seed=7)[0].question


@pytest.fixture(scope="module")
def draft():
    return TransformersStepModel(DRAFT_MODEL_DIR)


def test_step_has_well_formed_statistics(draft):
    out = draft.generate_step(QUESTION, [], seed=1)
    assert out.text and "\n\n" not in out.text
    assert out.generated_tokens == len(out.tokens) == len(out.max_logits) == len(out.top_logprobs)
    assert out.prompt_tokens == len(draft.tokenizer(draft.prompt(QUESTION, []), add_special_tokens=False)["input_ids"])
    for top, max_logit in zip(out.top_logprobs, out.max_logits):
        assert len(top) == 5
        logprobs = [lp for _, lp in top]
        assert logprobs == sorted(logprobs, reverse=True) and all(lp <= 0 for lp in logprobs)
        assert sum(math.exp(lp) for lp in logprobs) <= 1 + 1e-5
        assert math.isfinite(max_logit)
    assert out.tokens[-1].endswith(shipped_task().STEP_SEPARATOR) and not out.finished  # the step's last token ends it
    assert out.model == "draft"


def test_same_seed_same_step_and_greedy_is_deterministic(draft):
    a = draft.generate_step(QUESTION, [], seed=3, temperature=1.5)
    b = draft.generate_step(QUESTION, [], seed=3, temperature=1.5)
    assert (a.text, a.max_logits) == (b.text, b.max_logits)
    texts = {draft.generate_step(QUESTION, [], seed=s, temperature=3.0).text for s in range(12)}
    assert len(texts) > 1  # a hot sampler with different seeds does not always agree
    assert draft.generate_step(QUESTION, [], temperature=0).text == draft.generate_step(QUESTION, [], temperature=0).text


def test_prefix_cache_is_reported_and_changes_nothing():
    draft = TransformersStepModel(DRAFT_MODEL_DIR)
    first = draft.generate_step(QUESTION, [], seed=0, temperature=0)
    second = draft.generate_step(QUESTION, [first.text], seed=0, temperature=0)
    assert first.cached_tokens == 0
    assert second.cached_tokens >= first.prompt_tokens  # the question and first step are not prefilled again
    fresh = TransformersStepModel(DRAFT_MODEL_DIR).generate_step(QUESTION, [first.text], seed=0, temperature=0)
    assert fresh.cached_tokens == 0
    assert fresh.text == second.text
    assert fresh.max_logits == pytest.approx(second.max_logits, abs=1e-4)


def test_final_step_ends_the_answer():
    target = TransformersStepModel(TARGET_MODEL_DIR)
    problem = shipped_task().generate("test", 1, seed=11)[0]
    out = target.generate_step(problem.question, list(problem.steps[:-1]), temperature=0)
    assert shipped_task().is_final_step(out.text)


def test_long_prompt_is_refused_with_a_clear_error(draft):
    positions = json.loads((DRAFT_MODEL_DIR / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(ValueError, match=rf"at most {positions}\."):
        draft.generate_step(QUESTION * positions, [])


def test_loading_a_directory_that_is_not_a_model_fails_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        TransformersStepModel(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ModelLoadError, match="no safetensors weights"):
        TransformersStepModel(tmp_path)


def test_sampled_token_logprobs_are_the_models_own_at_temperature_1(draft):
    """Each sampled token's log-probability is log-softmax of the raw logits (T = 1), whatever the sampling temperature."""
    greedy = draft.generate_step(QUESTION, [], temperature=0)
    assert greedy.token_logprobs == pytest.approx([top[0][1] for top in greedy.top_logprobs])
    for seed in range(3):
        hot = draft.generate_step(QUESTION, [], temperature=1.5, seed=seed)
        assert len(hot.token_logprobs) == len(hot.tokens) and all(lp <= 0 for lp in hot.token_logprobs)
        for token, lp, top in zip(hot.tokens, hot.token_logprobs, hot.top_logprobs):
            listed = dict(top)
            if token in listed:  # the same number as the top-k list, not the tempered distribution's
                assert lp == pytest.approx(listed[token], abs=1e-5)
            else:
                assert lp <= min(listed.values()) + 1e-5


def test_step_logprobs_agree_with_the_cached_generation(draft):
    """Scoring a step in one uncached pass gives the log-probabilities its cached generation saw."""
    out = draft.generate_step(QUESTION, [], temperature=0)
    scored = draft.step_logprobs(QUESTION, [], out.text)
    greedy = [top[0][1] for top in out.top_logprobs]
    assert len(scored) == len(greedy)
    assert scored == pytest.approx(greedy, abs=1e-4)
