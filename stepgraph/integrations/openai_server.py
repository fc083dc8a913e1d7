"""An OpenAI-compatible HTTP server over the routed graph (``stepgraph serve``).

    GET  /health                  liveness, no auth
    GET  /v1/models               the one served model
    POST /v1/chat/completions     the last user message is the question; ``stream: true`` sends
                                  one SSE chunk per decided step, then a chunk with
                                  ``finish_reason`` and ``usage``, then ``data: [DONE]``

Routing details ride in an extension field ``stepgraph`` on the response (and on each streamed
chunk): the answer, stop reason, escalations, every step with its tier, and the cost per tier.
Limits that protect the server (question length, steps, tokens per step, FLOPs budget,
concurrency) are the operator's ``ServerLimits``; a request can lower the token limit with
``max_tokens`` / ``max_completion_tokens`` but never raise any limit. Requests run concurrently
on the graph's async path; past ``max_concurrent`` running and ``max_queued`` waiting, a request
gets 429. Every error is an OpenAI error object, never a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stepgraph.context import RouterContext, RouterLimits
from stepgraph.costs import total_costs
from stepgraph.errors import BadQuestionError, ConfigError, StepgraphError

logger = logging.getLogger("stepgraph.serve")

MAX_TEMPERATURE = 2.0  # OpenAI's range for `temperature`


@dataclass(frozen=True)
class ServerLimits:
    """Operator limits; a request can lower the token limit but never raise any of these."""

    max_question_chars: int = 8000
    """Longest question accepted (characters)."""
    max_steps: int = 16
    """Step limit of one answer."""
    max_step_tokens: int = 64
    """Token limit of one step."""
    budget_flops: float | None = None
    """FLOPs budget of one answer (None: none)."""
    max_concurrent: int = 4
    """Requests that run at once."""
    max_queued: int = 64
    """Requests that may wait for a slot; past this a request gets 429."""

    def __post_init__(self) -> None:
        for name in ("max_question_chars", "max_steps", "max_step_tokens", "max_concurrent"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.max_queued < 0:
            raise ConfigError(f"max_queued must be 0 or more, got {self.max_queued}.")
        if self.budget_flops is not None and not self.budget_flops > 0:
            raise ConfigError(f"budget_flops must be positive, got {self.budget_flops}.")


class APIError(Exception):
    """An error answered in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = True


class ChatCompletionRequest(BaseModel):
    """The request fields the server reads; fields that would change the output and are not
    supported are rejected by name in ``unsupported_fields``; other unknown fields are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE)
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None


# field -> (value that changes nothing, why it is refused)
_NEUTRAL: dict[str, tuple[Any, str]] = {
    "n": (1, "this server returns one choice per request; set n to 1 or leave it out"),
    "top_p": (1.0, "the routed models sample with temperature only; leave top_p out or set it to 1"),
    "presence_penalty": (0.0, "penalties are not supported; leave it out or set it to 0"),
    "frequency_penalty": (0.0, "penalties are not supported; leave it out or set it to 0"),
    "logprobs": (False, "log-probabilities are not returned; leave it out or set it to false"),
    "top_logprobs": (0, "log-probabilities are not returned; leave it out"),
}
_REFUSED_IF_SET = {
    "tools": "the router does not call tools",
    "tool_choice": "the router does not call tools",
    "functions": "the router does not call functions",
    "function_call": "the router does not call functions",
    "logit_bias": "logit_bias is not supported",
    "stop": "stop sequences are not supported (each step ends at a step break)",
}


def unsupported_field(req: ChatCompletionRequest) -> APIError | None:
    """The first field whose value would change the output in a way this server cannot honour."""
    for name, (neutral, why) in _NEUTRAL.items():
        value = getattr(req, name)
        if value is not None and value != neutral:
            return APIError(400, f"Unsupported value of '{name}': {why}.", param=name, code="unsupported_parameter")
    for name, why in _REFUSED_IF_SET.items():
        value = getattr(req, name)
        if value not in (None, [], "none"):
            return APIError(400, f"Unsupported parameter '{name}': {why}.", param=name, code="unsupported_parameter")
    if req.response_format is not None and req.response_format.get("type", "text") != "text":
        return APIError(400, "Unsupported 'response_format': the answer is free text (type 'text' only).",
                        param="response_format", code="unsupported_parameter")
    return None


def question_of(messages: list[ChatMessage]) -> str:
    """The last user message's text (the graph answers one question; earlier turns are not read)."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        parts = []
        for j, part in enumerate(message.content or []):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content[{j}] has type {part.get('type')!r}; only text parts "
                               "are supported.", param=f"messages[{i}].content[{j}].type")
            parts.append(part["text"])
        return "\n".join(parts)
    raise APIError(400, "No user message: put the question in a message with role 'user'.", param="messages")


def _step_info(step: dict[str, Any]) -> dict[str, Any]:
    observation = step.get("observation") or {}
    return {"index": step["index"], "tier": step["tier"], "model": step["model"], "escalated": step["escalated"],
            "confidence": observation.get("logit_confidence", step.get("confidence")),
            "gate_score": step.get("gate_score")}


def routing_details(result: dict[str, Any], *, stop_reason: str | None = None) -> dict[str, Any]:
    """The ``stepgraph`` extension field: how the answer was routed and what each tier cost."""
    return {
        "answer": result.get("answer"),
        "stop_reason": stop_reason or result.get("stop_reason"),
        "escalations": result.get("escalations", 0),
        "steps": [_step_info(s) for s in result.get("steps", [])],
        "costs": result.get("costs", {}),
        "totals": result.get("totals", {}),
    }


def usage_of(totals: dict[str, float]) -> dict[str, Any]:
    prompt, completion = int(totals.get("input_tokens", 0)), int(totals.get("output_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(totals.get("cached_tokens", 0))}}


def finish_reason_of(stop_reason: str | None) -> str:
    return "stop" if stop_reason == "final_answer" else "length"


class Admission:
    """At most ``running`` requests at once and ``queued`` waiting; the rest are refused (429)."""

    def __init__(self, running: int, queued: int) -> None:
        self._slots = asyncio.Semaphore(running)
        self._capacity = running + queued
        self._admitted = 0

    def enter(self) -> None:
        if self._admitted >= self._capacity:
            raise APIError(429, "The server is at its concurrency limit; retry later.",
                           type="rate_limit_error", code="rate_limit_exceeded")
        self._admitted += 1

    def leave(self) -> None:
        self._admitted -= 1

    @property
    def slots(self) -> asyncio.Semaphore:
        return self._slots


def create_app(graph: Any, *, limits: ServerLimits = ServerLimits(), model_name: str = "stepgraph",
               api_key: str | None = None, temperature: float = 0.7, seed: int | None = 0,
               gate: str | None = None, sticky: bool = False, shutdown_grace: float = 25.0) -> FastAPI:
    """The FastAPI app serving ``graph`` as the model ``model_name``.

    Args:
        graph: a compiled stepgraph graph (``default_graph()`` for the shipped pair).
        limits: the operator's limits.
        model_name: the model id clients send and ``/v1/models`` lists.
        api_key: when set, every /v1 request needs ``Authorization: Bearer <api_key>``.
        temperature: default sampling temperature (a request's ``temperature`` overrides it).
        seed: default base seed (a request's ``seed`` overrides it; None: random).
        gate: the graph's gate to use (None: its default).
        sticky: keep later steps on an escalated tier.
        shutdown_grace: on shutdown, seconds an open stream may go on before it is cancelled
            (keep it below uvicorn's ``timeout_graceful_shutdown``).
    """
    app = FastAPI(title="stepgraph", docs_url=None, redoc_url=None, openapi_url=None)
    admission = Admission(limits.max_concurrent, limits.max_queued)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".") or None
        if first.get("type") == "json_invalid":
            return APIError(400, "The request body is not valid JSON.").response()
        message = f"Invalid value for '{param}': {first.get('msg')}." if param else f"Invalid request: {first.get('msg')}."
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), code=None).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this response, so the server logs the traceback.
        return APIError(500, "Internal server error; the server log has the details.", type="server_error").response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "stepgraph"}]}

    def plan(req: ChatCompletionRequest) -> tuple[str, RouterContext, int | None]:
        """The question, the run's context and the completion-token cap, or an APIError."""
        if req.model != model_name:
            raise APIError(404, f"The model '{req.model}' does not exist; this server serves '{model_name}'.",
                           param="model", code="model_not_found")
        refused = unsupported_field(req)
        if refused is not None:
            raise refused
        if req.temperature is not None and not math.isfinite(req.temperature):
            raise APIError(400, "temperature must be a number from 0 to 2.", param="temperature")
        question = question_of(req.messages)
        if not question.strip():
            raise APIError(400, "The question (last user message) is empty.", param="messages")
        if len(question) > limits.max_question_chars:
            raise APIError(400, f"The question has {len(question)} characters; this server's limit is "
                           f"{limits.max_question_chars}.", param="messages", code="context_length_exceeded")
        caps = [c for c in (req.max_tokens, req.max_completion_tokens) if c is not None]
        token_cap = min(caps) if caps else None
        context = RouterContext(
            gate=gate, max_steps=limits.max_steps, budget_flops=limits.budget_flops,
            temperature=temperature if req.temperature is None else req.temperature,
            seed=seed if req.seed is None else req.seed, sticky=sticky,
            max_step_tokens=min(limits.max_step_tokens, token_cap or limits.max_step_tokens),
        )
        return question, context, token_cap

    async def run_steps(question: str, context: RouterContext, token_cap: int | None) -> AsyncIterator[dict[str, Any]]:
        """Yield each decided step's event, then ``{"event": "end", "result": ..., "stop_reason": ...}``.

        With a token cap, the run stops once the steps so far have generated that many tokens
        (stop reason ``max_tokens``), unless that step ended the answer anyway.
        """
        result: dict[str, Any] = {}
        stop_reason = None
        capped = False
        stream = graph.astream({"question": question}, context=context, stream_mode=["custom", "values"])
        try:
            async for mode, payload in stream:
                if mode == "values":
                    result = payload
                    if capped and not result.get("stop_reason"):
                        stop_reason = "max_tokens"
                        break
                elif payload.get("event") == "step":
                    yield payload
                    # The state before `append` already holds this step's calls in `costs`.
                    spent = total_costs(result.get("costs", {}))["output_tokens"]
                    capped = token_cap is not None and spent >= token_cap
        finally:
            await stream.aclose()
        yield {"event": "end", "result": result, "stop_reason": stop_reason}

    async def admitted(question: str, context: RouterContext, token_cap: int | None) -> AsyncIterator[dict[str, Any]]:
        admission.enter()
        try:
            async with admission.slots:
                async for event in run_steps(question, context, token_cap):
                    yield event
        except BadQuestionError as exc:
            raise APIError(400, str(exc), param="messages") from exc
        except StepgraphError as exc:
            logger.warning("run failed: %s", exc)
            raise APIError(500, str(exc), type="server_error") from exc
        finally:
            admission.leave()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        question, context, token_cap = plan(req)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created_at = int(time.time())
        base = {"id": completion_id, "created": created_at, "model": model_name, "system_fingerprint": None}
        if not req.stream:
            texts: list[str] = []
            end: dict[str, Any] = {}
            async for event in admitted(question, context, token_cap):
                if event["event"] == "step":
                    texts.append(event["text"])
                else:
                    end = event
            result = end["result"]
            return {
                **base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "\n\n".join(texts)},
                             "finish_reason": finish_reason_of(end["stop_reason"] or result.get("stop_reason")),
                             "logprobs": None}],
                "usage": usage_of(result.get("totals", {})),
                "stepgraph": routing_details(result, stop_reason=end["stop_reason"]),
            }
        admission.enter()  # refuse with 429 before the stream starts, not inside it
        admission.leave()
        include_usage = req.stream_options.include_usage if req.stream_options else True
        return EventSourceResponse(_sse(admitted(question, context, token_cap), base, include_usage),
                                   ping=15, send_timeout=30, shutdown_grace_period=shutdown_grace)

    return app


async def _sse(events: AsyncIterator[dict[str, Any]], base: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunk stream: one chunk per step, a final chunk with finish_reason (and usage), [DONE]."""
    chunk = {**base, "object": "chat.completion.chunk"}
    first = True
    try:
        async for event in events:
            if event["event"] == "step":
                delta: dict[str, Any] = {"content": ("" if first else "\n\n") + event["text"]}
                if first:
                    delta["role"] = "assistant"
                first = False
                yield json.dumps({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}],
                                  "stepgraph": {"step": _step_info(event)}})
                continue
            result = event["result"]
            final: dict[str, Any] = {
                **chunk,
                "choices": [{"index": 0, "delta": {"role": "assistant"} if first else {},
                             "finish_reason": finish_reason_of(event["stop_reason"] or result.get("stop_reason")),
                             "logprobs": None}],
                "stepgraph": routing_details(result, stop_reason=event["stop_reason"]),
            }
            if include_usage:
                final["usage"] = usage_of(result.get("totals", {}))
            yield json.dumps(final)
    except APIError as exc:
        yield json.dumps(exc.body())
    except Exception:
        logger.exception("unexpected error while streaming")
        yield json.dumps(APIError(500, "Internal server error; the server log has the details.", type="server_error").body())
    yield "[DONE]"


def load_graph(config: Path | None = None, limits: RouterLimits | None = None) -> Any:
    """The graph to serve: the shipped pair with its gates, or the run spec's tiers and gate at ``config``."""
    if config is None:
        from stepgraph.integrations.studio import shipped_graph

        return shipped_graph(limits)
    from stepgraph.graph import build_graph
    from stepgraph.training.spec import load_spec

    spec = load_spec(config)
    tiers = spec.build_tiers()
    return build_graph(tiers, spec.build_gate(tiers), prices=spec.prices(), limits=limits)


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, shutdown_timeout: float = 30.0,
          log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until SIGINT/SIGTERM.

    On SIGTERM uvicorn stops accepting connections and lets in-flight requests finish for up to
    ``shutdown_timeout`` seconds, then cancels them (the graph holds no checkpoint to corrupt:
    a cancelled run simply has no answer).
    """
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=math.ceil(shutdown_timeout),
                access_log=True)
