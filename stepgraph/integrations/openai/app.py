"""The FastAPI app and its routes (auth, errors in OpenAI's format, /ready, /metrics), the graph to
serve, and uvicorn.

Every response carries ``x-request-id`` (the client's, or a new one), which is also on each log line;
a 429 carries ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from stepgraph.context import SERVER_LIMITS, RouterContext, RouterLimits
from stepgraph.integrations.openai.protocol import APIError, ChatCompletionRequest
from stepgraph.integrations.openai.serving import ServingChat, ServingModels
from stepgraph.integrations.operations import Metrics, Readiness, RequestLog, ServerGuard, configure_logging
from stepgraph.integrations.threads import check_url, postgres_checkpointer
from stepgraph.models.base import DEFAULT_TEMPERATURE

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than the longest question the limits accept


def create_app(graph: Any, *, limits: RouterLimits = SERVER_LIMITS, model_name: str = "stepgraph",
               api_key: str | None = None, temperature: float = DEFAULT_TEMPERATURE, seed: int | None = 0,
               gate: str | None = None, sticky: bool = False, shutdown_grace: float = 25.0,
               tiers: Sequence[Any] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               cors_origins: Sequence[str] = (), metrics: Metrics | None = None,
               checkpointer: str | None = None) -> FastAPI:
    """The FastAPI app serving ``graph`` as the model ``model_name``.

    Args:
        graph: a compiled stepgraph graph (``default_graph()`` for the shipped tiers).
        limits: the operator's limits (build the graph with the same object, so no run can lift them).
        model_name: the model id clients send and ``/v1/models`` lists.
        api_key: when set, every /v1 request needs ``Authorization: Bearer <api_key>``.
        temperature: default sampling temperature (a request's ``temperature`` overrides it).
        seed: default base seed (a request's ``seed`` overrides it; None: random).
        gate: the graph's gate to use (None: its default).
        sticky: keep later steps on an escalated tier.
        shutdown_grace: on shutdown, seconds an open stream may go on before it is cancelled
            (keep it below uvicorn's ``timeout_graceful_shutdown``).
        tiers: the graph's models, each asked for a warm-up step at startup before ``/ready``
            says 200 (None: ready at once).
        max_body_bytes: larger request bodies get 413 before they are read.
        cors_origins: browser origins allowed by CORS (none: no CORS headers).
        metrics: the Prometheus metrics to count into (None: a new registry, ``app.state.metrics``).
        checkpointer: a ``postgresql://`` URL: runs are threads in LangGraph's Postgres checkpointer
            (see ``stepgraph.integrations.threads``), opened when the app starts.
    """
    metrics = metrics or Metrics()
    if checkpointer is not None:
        check_url(checkpointer)
    readiness = Readiness()
    if tiers is None:
        readiness.ready = True
    models = ServingModels(model_name)
    chat = ServingChat(graph, limits=limits, context=RouterContext(gate=gate, temperature=temperature, seed=seed, sticky=sticky),
                       model_name=model_name, shutdown_grace=shutdown_grace, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warm_up = asyncio.create_task(readiness.warm_up(tiers)) if tiers is not None else None
        async with contextlib.AsyncExitStack() as stack:
            if checkpointer is not None:  # conversations live in PostgreSQL, shared by every replica
                chat.use_checkpointer(await stack.enter_async_context(postgres_checkpointer(checkpointer)))
            yield
        if warm_up is not None:
            warm_up.cancel()

    app = _LoggedApp(title="stepgraph", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.metrics, app.state.readiness, app.state.admission = metrics, readiness, chat.admission

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

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        status, body = readiness.body()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return models.list()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        return await chat.create(req, request.headers)

    # Outermost first: (the request id and access line, see _LoggedApp), CORS (preflights need no key),
    # then the key and body checks.
    app.add_middleware(ServerGuard, api_key=api_key, max_body_bytes=max_body_bytes, protected=("/v1/",))
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    return app


class _LoggedApp(FastAPI):
    """``RequestLog`` outside even Starlette's error middleware, so a 500 also carries its request id."""

    def build_middleware_stack(self) -> Any:
        stack: Any = super().build_middleware_stack()  # a Starlette ASGI app (its scope type is a MutableMapping)
        return RequestLog(stack, self.state.metrics)


def load_graph(config: Path | None = None, limits: RouterLimits | None = None) -> Any:
    """The graph to serve: the shipped tiers with their gates, or the run spec's tiers and gate at ``config``."""
    return load_served(config, limits)[0]


def load_served(config: Path | None = None, limits: RouterLimits | None = None) -> tuple[Any, list[Any]]:
    """``load_graph``'s graph and its tiers (cheapest first), which ``/ready`` warms up."""
    if config is None:
        from stepgraph.integrations.studio import _shipped_tiers, shipped_graph

        return shipped_graph(limits), list(_shipped_tiers())
    from stepgraph.graph import build_graph
    from stepgraph.runspec import load_runtime_spec

    spec = load_runtime_spec(config)
    tiers = spec.build_tiers()
    return build_graph(tiers, spec.build_gate(tiers), prices=spec.prices(), limits=limits), list(tiers)


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, shutdown_timeout: float = 30.0,
          log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until SIGINT/SIGTERM.

    On SIGTERM uvicorn stops accepting connections and lets in-flight requests finish for up to
    ``shutdown_timeout`` seconds, then cancels them (the graph holds no checkpoint to corrupt:
    a cancelled run simply has no answer).
    """
    import uvicorn

    configure_logging(log_level)
    # RequestLog writes the one access line per request (with its id and latency), so uvicorn's is off.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=math.ceil(shutdown_timeout),
                access_log=False)
