"""What a step shows: valid text, and no more confidence than the gate had."""

import pytest
from transformers import AutoTokenizer

from stepgraph.cli import _step_confidence
from stepgraph.models.base import split_step
from stepgraph.testbed import DRAFT_MODEL_DIR


def test_step_text_drops_bytes_that_are_not_utf8():
    tokenizer = AutoTokenizer.from_pretrained(DRAFT_MODEL_DIR)
    ids = tokenizer("é€", add_special_tokens=False)["input_ids"]  # byte tokens: é is 2 of them, € 3
    cut = tokenizer.decode(ids[:3])  # € cut after its first byte, as at a step's token limit
    swapped = tokenizer.decode([ids[1], ids[0]])  # bytes sampled out of order
    assert "\ufffd" in cut and "\ufffd" in swapped
    assert split_step(cut) == ("é", False)
    assert split_step(swapped + "1\n\nnext") == ("1", True)


@pytest.mark.parametrize(
    ("escalated", "score", "shown"),
    [(False, 0.8, "conf 0.91, gate 0.8"), (False, None, "conf 0.91, no gate decision"),
     (True, 0.3, "draft conf 0.91, gate 0.3: escalated"), (True, None, "draft conf 0.91: escalated")],
)
def test_cli_attributes_confidence_to_the_draft_the_gate_saw(escalated, score, shown):
    step = {"observation": {"logit_confidence": 0.91}, "gate_score": score, "escalated": escalated}
    assert _step_confidence(step) == shown
