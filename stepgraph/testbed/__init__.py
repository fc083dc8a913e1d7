"""The testbed: a step-checkable arithmetic task and the shipped draft/target model pair."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
DRAFT_MODEL_DIR = MODELS_DIR / "draft"
TARGET_MODEL_DIR = MODELS_DIR / "target"


def load_pair():
    """The shipped (draft, target) pair as local transformers step models."""
    from stepgraph.models.local import TransformersStepModel

    return [TransformersStepModel(DRAFT_MODEL_DIR), TransformersStepModel(TARGET_MODEL_DIR)]
