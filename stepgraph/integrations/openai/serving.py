"""One class per endpoint: ``ServingModels`` (GET /v1/models) and ``ServingChat`` (POST
/v1/chat/completions), and the ``Admission`` control they share."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse

from stepgraph.context import RouterContext, RouterLimits
from stepgraph.costs import total_costs
from stepgraph.errors import BadQuestionError, StepgraphError
from stepgraph.integrations.openai.protocol import (
    APIError,
    ChatCompletionRequest,
    completion,
    final_chunk,
    question_of,
    step_chunk,
    unsupported_field,
)

logger = logging.getLogger("stepgraph.serve")


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


class ServingModels:
    """GET /v1/models: the one served model."""

    def __init__(self, model_name: str) -> None:
        self.model_name, self.created = model_name, int(time.time())

    def list(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created, "owned_by": "stepgraph"}]}


class ServingChat:
    """POST /v1/chat/completions over the graph's async path, within the operator's ``limits``.

    Args:
        graph: a compiled stepgraph graph.
        limits: the operator's limits (one ``RouterLimits``): each run gets ``max_steps``,
            ``max_step_tokens`` (or a request's lower ``max_tokens``) and ``max_budget_flops``.
        context: the run settings a request does not choose (gate, sticky) and the defaults of those
            it may (temperature, seed).
        model_name: the model id clients must send.
        shutdown_grace: on shutdown, seconds an open stream may go on before it is cancelled.
    """

    def __init__(self, graph: Any, *, limits: RouterLimits, context: RouterContext, model_name: str,
                 shutdown_grace: float) -> None:
        self.graph, self.limits, self.context, self.model_name = graph, limits, context, model_name
        self.shutdown_grace = shutdown_grace
        self.admission = Admission(limits.max_concurrent, limits.max_queued)

    def plan(self, req: ChatCompletionRequest) -> tuple[str, RouterContext, int | None]:
        """The question, the run's context and the completion-token cap, or an APIError."""
        if req.model != self.model_name:
            raise APIError(404, f"The model '{req.model}' does not exist; this server serves '{self.model_name}'.",
                           param="model", code="model_not_found")
        refused = unsupported_field(req)
        if refused is not None:
            raise refused
        if req.temperature is not None and not math.isfinite(req.temperature):
            raise APIError(400, "temperature must be a number from 0 to 2.", param="temperature")
        question = question_of(req.messages)
        if not question.strip():
            raise APIError(400, "The question (last user message) is empty.", param="messages")
        limits = self.limits
        if len(question) > limits.max_question_chars:
            raise APIError(400, f"The question has {len(question)} characters; this server's limit is "
                           f"{limits.max_question_chars}.", param="messages", code="context_length_exceeded")
        caps = [c for c in (req.max_tokens, req.max_completion_tokens) if c is not None]
        token_cap = min(caps) if caps else None
        context = RouterContext(
            gate=self.context.gate, max_steps=limits.max_steps, budget_flops=limits.max_budget_flops,
            temperature=self.context.temperature if req.temperature is None else req.temperature,
            seed=self.context.seed if req.seed is None else req.seed, sticky=self.context.sticky,
            max_step_tokens=min(limits.max_step_tokens, token_cap or limits.max_step_tokens),
        )
        return question, context, token_cap

    async def run_steps(self, question: str, context: RouterContext, token_cap: int | None) -> AsyncIterator[dict[str, Any]]:
        """Yield each decided step's event, then ``{"event": "end", "result": ..., "stop_reason": ...}``.

        With a token cap, the run stops once the steps so far have generated that many tokens
        (stop reason ``max_tokens``), unless that step ended the answer anyway.
        """
        result: dict[str, Any] = {}
        stop_reason = None
        capped = False
        stream = self.graph.astream({"question": question}, context=context, stream_mode=["custom", "values"])
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

    async def admitted(self, question: str, context: RouterContext, token_cap: int | None) -> AsyncIterator[dict[str, Any]]:
        self.admission.enter()
        try:
            async with self.admission.slots:
                async for event in self.run_steps(question, context, token_cap):
                    yield event
        except BadQuestionError as exc:
            raise APIError(400, str(exc), param="messages") from exc
        except StepgraphError as exc:
            logger.warning("run failed: %s", exc)
            raise APIError(500, str(exc), type="server_error") from exc
        finally:
            self.admission.leave()

    async def create(self, req: ChatCompletionRequest) -> Any:
        """The completion (a dict), or for ``stream: true`` an SSE response of chunks."""
        question, context, token_cap = self.plan(req)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_name,
                "system_fingerprint": None}
        if not req.stream:
            texts: list[str] = []
            end: dict[str, Any] = {}
            async for event in self.admitted(question, context, token_cap):
                if event["event"] == "step":
                    texts.append(event["text"])
                else:
                    end = event
            return completion(base, "\n\n".join(texts), end["result"], end["stop_reason"])
        self.admission.enter()  # refuse with 429 before the stream starts, not inside it
        self.admission.leave()
        include_usage = req.stream_options.include_usage if req.stream_options else True
        return EventSourceResponse(sse(self.admitted(question, context, token_cap), base, include_usage),
                                   ping=15, send_timeout=30, shutdown_grace_period=self.shutdown_grace)


async def sse(events: AsyncIterator[dict[str, Any]], base: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunk stream: one chunk per step, a final chunk with finish_reason (and usage), [DONE]."""
    first = True
    try:
        async for event in events:
            if event["event"] == "step":
                yield json.dumps(step_chunk(base, event, first))
                first = False
                continue
            yield json.dumps(final_chunk(base, event["result"], event["stop_reason"], first=first, include_usage=include_usage))
    except APIError as exc:
        yield json.dumps(exc.body())
    except Exception:
        logger.exception("unexpected error while streaming")
        yield json.dumps(APIError(500, "Internal server error; the server log has the details.", type="server_error").body())
    yield "[DONE]"
