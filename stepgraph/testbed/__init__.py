"""The testbed: a step-checkable arithmetic task and the shipped models: draft, mid and target.

The default router is the 3-tier draft → mid → target one (``load_tiers()``, ``DEFAULT_TIERS``):
the bench measured it cheaper than the draft → target pair (``load_pair``) at coverage ≥ 0.98
(BENCHMARKS.md, "2 tiers against 3 on the v2 tiers"). ``testbed_task()`` is the task they were
trained on.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

MODELS_DIR = Path(__file__).parent / "models"
DRAFT_MODEL_DIR = MODELS_DIR / "draft"
TARGET_MODEL_DIR = MODELS_DIR / "target"
MID_MODEL_DIR = MODELS_DIR / "mid"
TIER_DIRS = {2: (DRAFT_MODEL_DIR, TARGET_MODEL_DIR), 3: (DRAFT_MODEL_DIR, MID_MODEL_DIR, TARGET_MODEL_DIR)}
"""The shipped tiers, cheapest first, by how many a router uses."""
DEFAULT_TIERS = 3
"""How many shipped tiers the default router uses (``solve``, the Studio graph, the chat model, the
tool and both servers): the count the bench measured cheaper at coverage ≥ 0.98."""


BACKENDS = ("transformers", "vllm")
TASK_MODULES = {"v1": "stepgraph.testbed.task", "v2": "stepgraph.testbed.wordproblems"}
"""A ``training.json`` ``"task"`` → the task's module; both have the same API (``generate``, ``verify_step``, ...)."""


def testbed_task() -> ModuleType:
    """The task of the shipped tiers: the module named by the shipped target's ``training.json``
    ``"task"`` (``"v2"``: ``wordproblems``); ``task`` (v1) when it names none, as v1's summaries do.

    Example:
        >>> testbed_task().generate("test", 1, seed=0)[0].question  # doctest: +SKIP
    """
    summary = TIER_DIRS[2][-1] / "training.json"
    name = json.loads(summary.read_text()).get("task", "v1") if summary.is_file() else "v1"
    if name not in TASK_MODULES:
        raise ValueError(f"{summary} names task {name!r}; this stepgraph knows {sorted(TASK_MODULES)}.")
    return importlib.import_module(TASK_MODULES[name])


def load_pair(backend: str = "transformers") -> list:
    """The shipped (draft, target) pair as step models on a backend.

    ``"transformers"`` runs them in-process; ``"vllm"`` starts two vLLM offline engines with the
    CPU testbed settings (raw logits, caches under ``./.vllm-cache`` unless the environment says
    otherwise), which hold worker processes until ``close_pair``.
    """
    return load_tiers(2, backend)


def load_tiers(n: int = DEFAULT_TIERS, backend: str = "transformers") -> list:
    """The shipped tiers as step models, cheapest first: 2 (draft, target) or 3 (draft, mid, target;
    the default).

    Backends as in ``load_pair``.

    Example:
        >>> [m.name for m in load_tiers(3)]  # doctest: +SKIP
        ['draft', 'mid', 'target']
    """
    if n not in TIER_DIRS:
        raise ValueError(f"The testbed ships {sorted(TIER_DIRS)} tiers, not {n!r}.")
    if backend == "transformers":
        from stepgraph.models.local import TransformersStepModel

        return [TransformersStepModel(path) for path in TIER_DIRS[n]]
    if backend == "vllm":
        from stepgraph.testbed.vllm_serving import ENGINE_ARGS, configure_environment

        configure_environment(".vllm-cache")  # before vLLM is imported
        from stepgraph.models.vllm_engine import VLLMStepModel

        return [VLLMStepModel(path, engine_kwargs=ENGINE_ARGS) for path in TIER_DIRS[n]]
    raise ValueError(f"Unknown backend {backend!r}; choose from {BACKENDS}.")


def close_pair(tiers) -> None:
    """Release what the models hold (vLLM engines and their workers); a no-op for local models."""
    for model in tiers:
        close = getattr(model, "close", None)
        if close is not None:
            close()
