"""The stepwise router on the shipped testbed tiers (draft → mid → target), as LangGraph Studio and ``langgraph dev`` serve it.

The run's ``gate`` context field picks among ``STUDIO_GATES`` (registry names, first the default:
the shipped policy, else the confidence threshold), each built with the testbed defaults; the
gates' former names (``threshold``, ``draft``, ``target``) pick the same gates.
``graphs/router.py`` (what ``langgraph.json`` points at) serves ``served_graph()``, the same
graph under ``SERVED_LIMITS``; the chat model and the tool use ``default_graph()``.

The models load on the first run, not when the graph is built: importing the graph stays quick, so
the server starts without a slow-startup warning.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from stepgraph.context import RouterLimits
from stepgraph.models.base import QuestionScore, StepModel, StepOutput, agenerate

# What one client of the served graph may ask for: enough for the shipped tiers' answers (a few
# steps of a few dozen tokens), small enough that one request cannot hold the server for long.
SERVED_LIMITS = RouterLimits(max_question_chars=2000, max_steps=64, max_step_tokens=256)


class LazyStepModel:
    """A tier whose model is made by ``load`` on first use (once, also under concurrent runs).

    Args:
        name: the model's name, known before it loads (it names the tier in steps and costs).
        load: makes the model.
        n_params: its parameter count when known without loading it (so checking a policy's
            recorded tiers at build time loads nothing); None: the loaded model's.
    """

    def __init__(self, name: str, load: Callable[[], StepModel], n_params: int | None = None) -> None:
        self.name = name
        self._load = load
        self._n_params = n_params
        self._model: StepModel | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> StepModel:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    @property
    def n_params(self) -> int:
        return self.model.n_params if self._n_params is None else self._n_params

    def generate_step(self, question: str, steps: Sequence[str], **kwargs: Any) -> StepOutput:
        return self.model.generate_step(question, steps, **kwargs)

    def question_logprob(self, question: str) -> QuestionScore | None:
        """The loaded model's out-of-domain statistic (None where its backend has none)."""
        score = getattr(self.model, "question_logprob", None)
        return None if score is None else score(question)  # type: ignore[no-any-return]

    async def agenerate_step(self, question: str, steps: Sequence[str], **kwargs: Any) -> StepOutput:
        # Loading reads files and takes seconds: a worker thread does it, not the event loop.
        model = self._model
        if model is None:
            model = await asyncio.to_thread(lambda: self.model)
        return await agenerate(model, question, steps, **kwargs)


def _local_model(path: Path) -> LazyStepModel:
    from stepgraph.models.vllm_engine import count_parameters  # safetensors headers only; vLLM is not imported

    def load() -> StepModel:
        from stepgraph.models.local import TransformersStepModel

        return TransformersStepModel(path)

    return LazyStepModel(path.name, load, n_params=count_parameters(path))


@lru_cache(maxsize=1)
def _shipped_tiers() -> list[StepModel]:
    from stepgraph.testbed import DEFAULT_TIERS, TIER_DIRS

    return [_local_model(path) for path in TIER_DIRS[DEFAULT_TIERS]]


STUDIO_GATES = ("confidence-threshold", "never-escalate", "always-escalate")
"""The registered gates the Studio graph offers besides the default (all need no file of their own)."""


def _graph(name: str, limits: RouterLimits | None) -> Any:
    from stepgraph.graph import build_graph
    from stepgraph.routing.gates import ALIASES
    from stepgraph.testbed.defaults import default_gate_name, resolve_gate

    tiers = _shipped_tiers()
    gates = {gate: resolve_gate(gate, n_tiers=len(tiers)) for gate in dict.fromkeys((default_gate_name(len(tiers)), *STUDIO_GATES))}
    gates |= {alias: gates[gate] for alias, gate in ALIASES.items() if gate in gates}  # former names, same gates
    return build_graph(tiers, gates, name=name, limits=limits)


def shipped_graph(limits: RouterLimits | None = None) -> Any:
    """The shipped tiers with their gates under the operator's ``limits`` (models shared, loaded on first use)."""
    return _graph("stepgraph", limits)


@lru_cache(maxsize=1)
def default_graph() -> Any:
    """The shipped tiers with their gates, built once per process (the chat model and tool share it)."""
    return _graph("stepgraph", None)


@lru_cache(maxsize=1)
def served_graph() -> Any:
    """``default_graph`` under ``SERVED_LIMITS``, for the LangGraph server: no client can lift them."""
    return _graph("stepgraph", SERVED_LIMITS)
