"""One class per endpoint: ``ServingModels`` (GET /v1/models) and ``ServingChat`` (POST
/v1/chat/completions), and its ``Admission`` control (one ``Ticket`` per admitted request)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import anyio
from sse_starlette import EventSourceResponse

from stepgraph.context import RouterContext, RouterLimits
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
from stepgraph.integrations.operations import Metrics
from stepgraph.integrations.threads import answers_on, new_thread_id, thread_id_of
from stepgraph.models.costs import total_costs

logger = logging.getLogger("stepgraph.serve")


RETRY_AFTER_SECONDS = 1
SHUTDOWN_MARGIN = 1.0  # seconds before the grace period ends that a running stream sends its error event


class Admission:
    """At most ``running`` requests at once and ``queued`` waiting; the rest are refused (429).

    ``enter`` admits a request once, before its response starts, and returns a ``Ticket`` that
    is released exactly once when the response ends (however it ends); ``metrics`` (optional)
    gets the queued and running counts.
    """

    def __init__(self, running: int, queued: int, metrics: Metrics | None = None) -> None:
        self._slots = asyncio.Semaphore(running)
        self._capacity = running + queued
        self._admitted = 0
        self._metrics = metrics

    def enter(self) -> Ticket:
        if self._admitted >= self._capacity:
            raise APIError(429, "The server is at its concurrency limit; retry later.",
                           type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self._admitted += 1
        self._gauge("queued", 1)
        return Ticket(self)

    def _gauge(self, name: str, change: int) -> None:
        if self._metrics is not None:
            getattr(self._metrics, "queued" if name == "queued" else "in_flight").inc(change)

    @property
    def admitted(self) -> int:
        return self._admitted


class Ticket:
    """One admitted request: ``async with ticket.running()`` holds a slot; ``release`` is idempotent."""

    def __init__(self, admission: Admission) -> None:
        self._admission, self._queued, self._released = admission, True, False

    def running(self) -> _Running:
        return _Running(self)

    def _leave_queue(self) -> None:
        if self._queued:
            self._queued = False
            self._admission._gauge("queued", -1)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._leave_queue()
            self._admission._admitted -= 1


class _Running:
    def __init__(self, ticket: Ticket) -> None:
        self._ticket = ticket

    async def __aenter__(self) -> None:
        await self._ticket._admission._slots.acquire()
        self._ticket._leave_queue()
        self._ticket._admission._gauge("running", 1)

    async def __aexit__(self, *exc: object) -> None:
        self._ticket._admission._gauge("running", -1)
        self._ticket._admission._slots.release()


class AdmittedStream(EventSourceResponse):
    """A stream whose admission ticket is released when the response ends, also if it never started."""

    def __init__(self, *args: Any, ticket: Ticket, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ticket = ticket

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.release()


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
        metrics: the Prometheus metrics to count into (None: a new registry).

    ``saver`` is the graph's checkpointer once the app has opened one (``--checkpointer``): then
    every run is a thread (see ``stepgraph.integrations.threads``).
    """

    def __init__(self, graph: Any, *, limits: RouterLimits, context: RouterContext, model_name: str,
                 shutdown_grace: float, metrics: Metrics | None = None) -> None:
        self.graph, self.limits, self.context, self.model_name = graph, limits, context, model_name
        self.shutdown_grace = shutdown_grace
        self.metrics = metrics or Metrics()
        self.admission = Admission(limits.max_concurrent, limits.max_queued, self.metrics)
        self.saver: Any = None

    def use_checkpointer(self, saver: Any) -> None:
        """Run every request as a thread in ``saver`` (LangGraph's Postgres checkpointer)."""
        self.graph, self.saver = self.graph.copy(update={"checkpointer": saver}), saver

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
            max_answer_tokens=token_cap,  # a hard cap: each call generates at most what is left of it
        )
        return question, context, token_cap

    async def run_steps(self, question: str, context: RouterContext, token_cap: int | None,
                        thread: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield each decided step's event, then ``{"event": "end", "result": ..., "stop_reason": ...}``.

        With a token cap, the run stops once the steps so far have generated that many tokens
        (stop reason ``max_tokens``), unless that step ended the answer anyway.
        """
        result: dict[str, Any] = {}
        stop_reason = None
        capped = False
        config = {"configurable": {"thread_id": thread}} if thread is not None else None
        stream = self.graph.astream({"question": question}, config, context=context, stream_mode=["custom", "values"])
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
        self.metrics.observe_run(result, stop_reason)
        end = {"event": "end", "result": result, "stop_reason": stop_reason}
        if thread is not None:
            end["thread"] = {"thread_id": thread, "answers": await answers_on(self.saver, thread)}
        yield end

    async def admitted(self, ticket: Ticket, question: str, context: RouterContext, token_cap: int | None,
                       thread: str | None = None) -> AsyncGenerator[dict[str, Any], None]:
        """The run's events under the request's admission ticket (released when the run ends)."""
        try:
            async with ticket.running():
                async for event in self.run_steps(question, context, token_cap, thread):
                    yield event
        except BadQuestionError as exc:
            raise APIError(400, str(exc), param="messages") from exc
        except StepgraphError as exc:
            logger.warning("run failed: %s", exc)
            raise APIError(500, str(exc), type="server_error") from exc
        finally:
            ticket.release()

    def thread_of(self, req: ChatCompletionRequest, headers: Mapping[str, str]) -> str | None:
        """The run's thread id when runs are threads (the header's, else ``user``, else a new one)."""
        if self.saver is None:
            return None
        try:
            return thread_id_of(headers, req.user) or new_thread_id()
        except ValueError as exc:
            raise APIError(400, str(exc), param="user") from exc

    async def create(self, req: ChatCompletionRequest, headers: Mapping[str, str] | None = None) -> Any:
        """The completion (a dict), or for ``stream: true`` an SSE response of chunks."""
        question, context, token_cap = self.plan(req)
        thread = self.thread_of(req, headers or {})
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_name,
                "system_fingerprint": None}
        if not req.stream:
            texts: list[str] = []
            end: dict[str, Any] = {}
            async for event in self.admitted(self.admission.enter(), question, context, token_cap, thread):
                if event["event"] == "step":
                    texts.append(event["text"])
                else:
                    end = event
            return completion(base, "\n\n".join(texts), end["result"], end["stop_reason"], end.get("thread"))
        ticket = self.admission.enter()  # admitted once, before the stream starts; released when it ends
        include_usage = req.stream_options.include_usage if req.stream_options else True
        shutdown = anyio.Event()  # set by sse-starlette when the server shuts down
        events = until_shutdown(self.admitted(ticket, question, context, token_cap, thread), shutdown, self.shutdown_grace)
        return AdmittedStream(sse(events, base, include_usage), ping=15, send_timeout=30, ticket=ticket,
                              shutdown_event=shutdown, shutdown_grace_period=self.shutdown_grace)


async def until_shutdown(events: AsyncGenerator[dict[str, Any], None], shutdown: anyio.Event,
                         grace: float) -> AsyncIterator[dict[str, Any]]:
    """``events``, unless the server shuts down and the run is still going near the end of ``grace``:
    then the run is cancelled and an APIError (503) ends the stream, which ``sse`` sends as an error event."""

    async def give_up() -> None:
        await shutdown.wait()
        await asyncio.sleep(max(0.0, grace - SHUTDOWN_MARGIN))

    deadline = asyncio.ensure_future(give_up())
    try:
        while True:
            step = asyncio.ensure_future(anext(events))
            await asyncio.wait({step, deadline}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                logger.warning("server shutting down: a stream still running was ended with an error event")
                raise APIError(503, "The server is shutting down; retry the request.", type="server_error",
                               code="server_shutting_down")
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        deadline.cancel()
        await events.aclose()  # a client that went away frees the run's slot now, not when collected


async def sse(events: AsyncIterator[dict[str, Any]], base: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunk stream: one chunk per step, a final chunk with finish_reason (and usage), [DONE]."""
    first = True
    try:
        async for event in events:
            if event["event"] == "step":
                yield json.dumps(step_chunk(base, event, first))
                first = False
                continue
            yield json.dumps(final_chunk(base, event["result"], event["stop_reason"], first=first,
                                         include_usage=include_usage, thread=event.get("thread")))
    except APIError as exc:
        yield json.dumps(exc.body())
    except Exception:
        logger.exception("unexpected error while streaming")
        yield json.dumps(APIError(500, "Internal server error; the server log has the details.", type="server_error").body())
    yield "[DONE]"
