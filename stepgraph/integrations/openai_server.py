"""Former home of the OpenAI-compatible server, now ``stepgraph.integrations.openai``; its names still import from here.

``ServerLimits`` is gone: the server reads the one ``RouterLimits`` (``budget_flops`` is now
``max_budget_flops``); ``ServerLimits(...)`` still works and returns a ``RouterLimits``, with a
DeprecationWarning.
"""

from __future__ import annotations

import warnings
from typing import Any

from stepgraph.context import SERVER_LIMITS, RouterLimits
from stepgraph.integrations.openai.app import create_app, load_graph, load_served, serve
from stepgraph.integrations.openai.protocol import (
    MAX_TEMPERATURE,
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    StreamOptions,
    finish_reason_of,
    question_of,
    routing_details,
    unsupported_field,
    usage_of,
)
from stepgraph.integrations.openai.serving import Admission, Ticket

__all__ = [
    "MAX_TEMPERATURE", "APIError", "Admission", "ChatCompletionRequest", "ChatMessage", "ServerLimits", "StreamOptions",
    "Ticket", "create_app", "finish_reason_of", "load_graph", "load_served", "question_of", "routing_details", "serve", "unsupported_field", "usage_of",
]


def ServerLimits(*, budget_flops: float | None = None, **limits: Any) -> RouterLimits:
    """Deprecated: the server's limits are a ``RouterLimits`` (``SERVER_LIMITS`` holds its defaults)."""
    warnings.warn("ServerLimits is deprecated: pass stepgraph.context.RouterLimits (budget_flops is now max_budget_flops).",
                  DeprecationWarning, stacklevel=2)
    defaults = {"max_steps": SERVER_LIMITS.max_steps, "max_step_tokens": SERVER_LIMITS.max_step_tokens}
    return RouterLimits(**{**defaults, **limits, "max_budget_flops": budget_flops})
