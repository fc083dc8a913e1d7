"""The shipped mid model runs on the real vLLM offline engine (head size 32, the CPU minimum)."""

import pytest

from stepgraph.models.local import TransformersStepModel
from stepgraph.testbed import MID_MODEL_DIR
from stepgraph.testbed import testbed_task as shipped_task
from stepgraph.testbed.vllm_serving import ENGINE_ARGS

pytestmark = pytest.mark.slow  # a vLLM engine on a shipped model


def test_vllm_serves_the_mid_model_like_transformers(vllm_ready):
    from stepgraph.models.vllm_engine import VLLMStepModel

    problem = shipped_task().generate("test", 1, seed=21)[0]
    engine = VLLMStepModel(MID_MODEL_DIR, engine_kwargs=ENGINE_ARGS)
    try:
        local = TransformersStepModel(MID_MODEL_DIR)
        assert engine.n_params == local.n_params
        ours, theirs = engine.generate_step(problem.question, [], temperature=0), local.generate_step(problem.question, [], temperature=0)
        assert ours.tokens == theirs.tokens and ours.text == theirs.text
        assert ours.max_logits == pytest.approx(theirs.max_logits, abs=1e-4)
    finally:
        engine.close()
