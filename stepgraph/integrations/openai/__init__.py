"""An OpenAI-compatible HTTP server over the routed graph (``stepgraph serve``).

    GET  /health                  liveness, no auth
    GET  /ready                   200 once every tier has answered a warm-up step, 503 before
    GET  /metrics                 Prometheus metrics (see ``operations.Metrics``)
    GET  /v1/models               the one served model
    POST /v1/chat/completions     the last user message is the question; ``stream: true`` sends
                                  one SSE chunk per decided step, then a chunk with
                                  ``finish_reason`` and ``usage``, then ``data: [DONE]``

Routing details ride in an extension field ``stepgraph`` on the response (and on each streamed
chunk): the answer, stop reason, escalations, every step with its tier, and the cost per tier.
Limits that protect the server (question length, steps, tokens per step, FLOPs budget,
concurrency) are the operator's ``RouterLimits``; a request can lower the token limit with
``max_tokens`` / ``max_completion_tokens`` but never raise any limit. Requests run concurrently
on the graph's async path; past ``max_concurrent`` running and ``max_queued`` waiting, a request
gets 429 with ``Retry-After``. Every error is an OpenAI error object, never a stack trace.
Every response carries ``x-request-id`` (the client's, or a new one), which is also on each log line.

Laid out as vLLM's entrypoint is: ``protocol`` (pydantic request and response models),
``serving`` (one class per endpoint), ``app`` (the FastAPI routes, the graph to serve, uvicorn).
"""

from stepgraph.integrations.openai.app import create_app, load_graph, load_served, serve
from stepgraph.integrations.openai.protocol import (
    APIError,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from stepgraph.integrations.openai.serving import ServingChat, ServingModels

__all__ = ["APIError", "ChatCompletionChunk", "ChatCompletionRequest", "ChatCompletionResponse", "ServingChat", "ServingModels", "create_app", "load_graph", "load_served", "serve"]
