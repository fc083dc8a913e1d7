"""What an operator needs around a stepgraph HTTP server: request ids, access logs with latency,
Prometheus metrics, readiness, and a guard that checks the key and the body size before the body is read.

Each piece is plain ASGI (no ``BaseHTTPMiddleware``, which would buffer streams), so the OpenAI-
compatible server and the MCP server over HTTP share them:

    app = ServerGuard(app, api_key=..., max_body_bytes=..., protected=("/v1/",))
    app = RequestLog(app, metrics)

``x-request-id`` is taken from the request when it is a sane token (as a load balancer sets it),
otherwise generated; it is returned on the response and stamped on every log line written while
the request runs (``RequestIdFilter``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger("stepgraph.serve")
access_logger = logging.getLogger("stepgraph.serve.access")

REQUEST_ID_HEADER = "x-request-id"
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("stepgraph_request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record as ``request_id`` ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str = "info") -> None:
    """One format for the server's own lines, each with the request id (the access log carries the latency)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    serve_logger = logging.getLogger("stepgraph")
    serve_logger.handlers[:] = [handler]
    serve_logger.setLevel(level.upper())
    serve_logger.propagate = False


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (two apps in one process never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("stepgraph_http_requests", "HTTP requests by method, path and status.",
                                ["method", "path", "status"], registry=self.registry)
        self.latency = Histogram("stepgraph_http_request_duration_seconds", "Time to the end of each response.",
                                 ["path"], registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.steps = Counter("stepgraph_steps", "Steps kept in answers, by the tier that wrote them.", ["tier"],
                             registry=self.registry)
        self.flops = Counter("stepgraph_generated_flops", "Generated FLOPs (2N per token), by tier.", ["tier"],
                             registry=self.registry)
        self.escalations = Counter("stepgraph_escalations", "Steps the gate sent to a stronger tier.",
                                   registry=self.registry)
        self.answers = Counter("stepgraph_answers", "Finished runs by stop reason.", ["stop_reason"],
                               registry=self.registry)
        self.queued = Gauge("stepgraph_requests_queued", "Admitted requests waiting for a slot.", registry=self.registry)
        self.in_flight = Gauge("stepgraph_requests_running", "Requests running on the graph now.",
                               registry=self.registry)

    def observe_run(self, result: Mapping[str, Any], stop_reason: str | None = None) -> None:
        """Count one finished run's steps, FLOPs and escalations by tier."""
        for step in result.get("steps", []):
            self.steps.labels(tier=str(step.get("tier"))).inc()
        for tier, costs in (result.get("costs") or {}).items():
            self.flops.labels(tier=str(tier)).inc(float(costs.get("flops", 0.0)))
        self.escalations.inc(int(result.get("escalations", 0) or 0))
        self.answers.labels(stop_reason=str(stop_reason or result.get("stop_reason"))).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Readiness:
    """Ready (200) only once every tier has loaded and answered a warm-up step; 503 before, or if that failed."""

    def __init__(self) -> None:
        self.ready = False
        self.error: str | None = None
        self.detail: list[dict[str, Any]] = []

    async def warm_up(self, tiers: Sequence[Any], question: str = "What is 1 + 1?") -> None:
        """Ask each tier for one short step, off the event loop (loading a model can take seconds)."""
        try:
            for index, model in enumerate(tiers):
                started = time.perf_counter()
                await asyncio.to_thread(model.generate_step, question, [], temperature=0.0, seed=0, max_tokens=4)
                self.detail.append({"tier": index, "model": getattr(model, "name", str(index)),
                                    "seconds": round(time.perf_counter() - started, 3)})
            self.ready = True
            logger.info("ready: %d tiers answered a warm-up step", len(tiers))
        except Exception as exc:  # noqa: BLE001  # any failure of a tier keeps the server out of rotation
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("warm-up failed, /ready stays 503: %s", self.error)

    def body(self) -> tuple[int, dict[str, Any]]:
        if self.ready:
            return 200, {"status": "ready", "tiers": self.detail}
        return 503, {"status": "failed" if self.error else "warming up", "error": self.error, "tiers": self.detail}


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return status, json.dumps(body).encode()


async def _respond(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class ServerGuard:
    """Checks the API key from the headers, then the body's size, before the app reads a byte of the body.

    Args:
        app: the wrapped ASGI app.
        api_key: when set, requests under ``protected`` need ``Authorization: Bearer <key>``.
        max_body_bytes: larger bodies get 413 (by ``Content-Length``, or while a chunked body streams in).
        protected: path prefixes that need the key (``/health``, ``/ready``, ``/metrics`` stay open).
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int,
                 protected: Sequence[str] = ("/v1/",)) -> None:
        self.app, self.api_key, self.max_body_bytes, self.protected = app, api_key, max_body_bytes, tuple(protected)

    def _authorized(self, headers: Mapping[bytes, bytes]) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if scope["path"].startswith(self.protected) and not self._authorized(headers):
            status, body = _error(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'.", "invalid_api_key")
            return await _respond(send, status, body, [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        too_large = _error(413, f"The request body is larger than this server's limit of {self.max_body_bytes} bytes.",
                           "request_too_large")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _respond(send, *too_large)
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except _BodyTooLarge:
            if not started:
                await _respond(send, *too_large)


class _BodyTooLarge(Exception):
    pass


class RequestLog:
    """Gives each request an id, counts and times it, and writes one access line with the latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started, status = time.perf_counter(), 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            path = _route_of(scope["path"])
            self.metrics.requests.labels(method=scope["method"], path=path, status=str(status)).inc()
            self.metrics.latency.labels(path=path).observe(seconds)
            access_logger.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000)
            request_id_var.reset(token)


_KNOWN_ROUTES = ("/v1/chat/completions", "/v1/models", "/health", "/ready", "/metrics", "/mcp")


def _route_of(path: str) -> str:
    """A bounded label for the metrics (arbitrary paths would grow the series without limit)."""
    return next((route for route in _KNOWN_ROUTES if path == route or path.startswith(route + "/")), "other")
