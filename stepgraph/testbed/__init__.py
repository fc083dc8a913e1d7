"""The testbed: a step-checkable arithmetic task and the shipped draft/target model pair."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
DRAFT_MODEL_DIR = MODELS_DIR / "draft"
TARGET_MODEL_DIR = MODELS_DIR / "target"


BACKENDS = ("transformers", "vllm")


def load_pair(backend: str = "transformers") -> list:
    """The shipped (draft, target) pair as step models on a backend.

    ``"transformers"`` runs them in-process; ``"vllm"`` starts two vLLM offline engines with the
    CPU testbed settings (raw logits, caches under ``./.vllm-cache`` unless the environment says
    otherwise), which hold worker processes until ``close_pair``.
    """
    if backend == "transformers":
        from stepgraph.models.local import TransformersStepModel

        return [TransformersStepModel(DRAFT_MODEL_DIR), TransformersStepModel(TARGET_MODEL_DIR)]
    if backend == "vllm":
        from stepgraph.testbed.vllm_serving import ENGINE_ARGS, configure_environment

        configure_environment(".vllm-cache")  # before vLLM is imported
        from stepgraph.models.vllm_engine import VLLMStepModel

        return [VLLMStepModel(DRAFT_MODEL_DIR, engine_kwargs=ENGINE_ARGS), VLLMStepModel(TARGET_MODEL_DIR, engine_kwargs=ENGINE_ARGS)]
    raise ValueError(f"Unknown backend {backend!r}; choose from {BACKENDS}.")


def close_pair(tiers) -> None:
    """Release what the models hold (vLLM engines and their workers); a no-op for local models."""
    for model in tiers:
        close = getattr(model, "close", None)
        if close is not None:
            close()
