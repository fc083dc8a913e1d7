"""A digest of what a compiled routing graph answers with: the LLM cache key's graph part.

Two graphs that may answer differently must never share a cache entry, even under one name. The
digest covers the graph's name and the objects its nodes are bound to (``build_graph``'s
``RoutingNodes``, allocator and planner): the tiers, every gate with its settings and artifact,
prices and limits. Stored state is read, never a mutable log:

- a tier (anything with ``generate_step``) is keyed on its type, name, parameter count, model
  directory (``path``), system prompt and, for a LangChain-backed tier, its chat model's own cache
  key; its counters and caches are left out;
- a gate, artifact or other object on its type and public attributes (private ones, such as a
  random generator's state, are left out), a few levels deep;
- weights (torch modules and tensors) by the sha256 of their bytes, up to ``MAX_HASHED_ELEMENTS``,
  larger ones by type and size only; numpy arrays by the sha256 of their bytes.

A graph whose nodes cannot be read (not built by ``build_graph``) is keyed by its object: it never
shares another graph's entries, and its own do not carry over to another process.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import weakref
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

# Weights past this many elements are keyed by type and size: hashing them on every call would cost
# more than the call (the testbed's policies have a few thousand).
MAX_HASHED_ELEMENTS = 10_000_000
_DEPTH = 4
_TIER_ATTRIBUTES = ("path", "system_prompt")
_opaque_ids = itertools.count()
_opaque: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def graph_fingerprint(graph: Any) -> str:
    """The sha256 hex digest of what ``graph`` answers with (see the module docstring)."""
    bound = _bound_objects(graph)
    if bound:
        described: Any = {"name": str(getattr(graph, "name", "")), "nodes": [_describe(b, _DEPTH) for b in bound]}
    else:
        described = {"type": _qualname(graph), "object": _object_token(graph)}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def tiers_of(graph: Any) -> list[Any]:
    """The tiers of a graph built by ``build_graph`` (cheapest first); [] if its nodes cannot be read."""
    for owner in _bound_objects(graph):
        tiers = getattr(owner, "tiers", None)
        if isinstance(tiers, list):
            return tiers
    return []


def _bound_objects(graph: Any) -> list[Any]:
    """The distinct objects whose methods are the graph's nodes, in node order."""
    nodes = getattr(getattr(graph, "builder", None), "nodes", None)
    if not isinstance(nodes, Mapping):
        return []
    bound: list[Any] = []
    for spec in nodes.values():
        owner = getattr(getattr(getattr(spec, "runnable", None), "func", None), "__self__", None)
        if owner is not None and not any(owner is b for b in bound):
            bound.append(owner)
    return bound


def _describe(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _describe(v, depth) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v, depth) for v in value]
    if callable(getattr(value, "generate_step", None)):
        return _describe_tier(value)
    if callable(getattr(value, "state_dict", None)):  # a torch module: its weights
        return {"type": _qualname(value), "weights": _weights_digest(value.state_dict())}
    if callable(getattr(value, "detach", None)) and hasattr(value, "numel"):  # a tensor
        return {"type": _qualname(value), "weights": _weights_digest({"": value})}
    if callable(getattr(value, "tobytes", None)) and hasattr(value, "shape"):  # a numpy array
        digest = hashlib.sha256(f"{value.dtype}:{value.shape}".encode() + value.tobytes()).hexdigest()
        return {"type": _qualname(value), "weights": digest}
    if inspect.isroutine(value):
        return _qualname(value)
    if depth == 0 or not hasattr(value, "__dict__"):
        return _qualname(value)
    public = {k: v for k, v in vars(value).items() if not k.startswith("_")}
    return {"type": _qualname(value), **{k: _describe(v, depth - 1) for k, v in public.items()}}


def _describe_tier(tier: Any) -> dict[str, Any]:
    described: dict[str, Any] = {"type": _qualname(tier), "name": getattr(tier, "name", None),
                                 "parameters": getattr(tier, "n_params", None)}
    for attribute in _TIER_ATTRIBUTES:
        if (value := getattr(tier, attribute, None)) is not None:
            described[attribute] = _describe(value, 0)
    chat_model = getattr(tier, "chat_model", None)
    if chat_model is not None:  # LangChain's own cache key of the model: name, endpoint, sampling settings
        llm_string = getattr(chat_model, "_get_llm_string", None)
        described["chat_model"] = llm_string() if callable(llm_string) else _qualname(chat_model)
    return described


def _weights_digest(tensors: Mapping[str, Any]) -> str:
    import torch

    if sum(int(t.numel()) for t in tensors.values()) > MAX_HASHED_ELEMENTS:
        return "large:" + ",".join(f"{name}{tuple(t.shape)}" for name, t in sorted(tensors.items()))
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        flat = tensor.detach().cpu().reshape(-1).contiguous()
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _object_token(value: Any) -> str:
    """A token unique to ``value`` while it lives (``id`` alone could be reused by a later object)."""
    try:
        token = _opaque.setdefault(value, next(_opaque_ids))
    except TypeError:  # not weak-referenceable: its id, for as long as it lives
        return f"id:{id(value)}"
    return f"object:{token}"


def _qualname(value: Any) -> str:
    kind = value if inspect.isroutine(value) or inspect.isclass(value) else type(value)
    return f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', repr(kind))}"
