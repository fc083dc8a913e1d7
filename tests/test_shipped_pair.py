"""The shipped testbed pair: shape, size, tokenizer, and accuracies measured again (not copied)."""

import json

import pytest
from stepgraph.training.testbed_models import tokenizer_for
from transformers import AutoConfig, AutoTokenizer

from stepgraph.models.local import TransformersStepModel
from stepgraph.testbed import DRAFT_MODEL_DIR, MODELS_DIR, TARGET_MODEL_DIR
from stepgraph.testbed import testbed_task as shipped_task
from stepgraph.testbed.measure import measure_model, measure_v2

pytestmark = pytest.mark.slow  # the shipped models over many problems

CARD = json.loads((MODELS_DIR / "measurements.json").read_text())
TASK = json.loads((TARGET_MODEL_DIR / "training.json").read_text()).get("task", "v1")  # the shipped tiers' task


def test_pair_fits_vllm_and_the_size_budget():
    sizes = sum(f.stat().st_size for d in (DRAFT_MODEL_DIR, TARGET_MODEL_DIR) for f in d.iterdir())
    assert sizes <= 40 * 2**20
    configs = [AutoConfig.from_pretrained(d) for d in (DRAFT_MODEL_DIR, TARGET_MODEL_DIR)]
    assert all(c.model_type == "qwen2" for c in configs)
    assert all(c.hidden_size // c.num_attention_heads >= 32 for c in configs)
    draft, target = (TransformersStepModel(d) for d in (DRAFT_MODEL_DIR, TARGET_MODEL_DIR))
    assert target.n_params >= 4 * draft.n_params


def test_shipped_tokenizer_loads_as_qwen2_and_matches_the_builder():
    shipped = AutoTokenizer.from_pretrained(DRAFT_MODEL_DIR)
    built = tokenizer_for(TASK)
    assert type(shipped).__name__ == "Qwen2Tokenizer"
    for problem in shipped_task().generate("test", 20, seed=5):
        text = shipped.apply_chat_template([{"role": "user", "content": problem.question}], tokenize=False,
                                           add_generation_prompt=True) + problem.solution
        assert shipped(text)["input_ids"] == built(text)["input_ids"]
        assert shipped.decode(shipped(text)["input_ids"]) == text


@pytest.mark.slow
@pytest.mark.parametrize("role", ["draft", "target"])
def test_accuracy_is_within_tolerance_of_the_card(role):
    # A fresh sample (other problems than the card's first ones; v1 samples with another seed): about 3 standard errors.
    assert CARD.get("task", "v1") == TASK  # the card measures the shipped tiers' task
    problems = shipped_task().generate("test", 400, seed=0)[-80:]
    path = DRAFT_MODEL_DIR if role == "draft" else TARGET_MODEL_DIR
    if TASK == "v1":  # sampled step by step
        measured, card = measure_model(TransformersStepModel(path), problems, temperature=0.7, seed=1), CARD[role]
    else:  # greedy and batched, a card entry per split
        measured, card = measure_v2(path, problems, name=role), CARD["test"][role]
    assert abs(measured["accuracy"] - card["accuracy"]) <= 0.16
    if role == "target":
        assert measured["accuracy"] >= 0.85
    else:
        assert 0.25 <= measured["accuracy"] <= 0.85
