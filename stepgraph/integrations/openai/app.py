"""The FastAPI app and its routes (auth, errors in OpenAI's format), the graph to serve, and uvicorn."""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stepgraph.context import SERVER_LIMITS, RouterContext, RouterLimits
from stepgraph.integrations.openai.protocol import APIError, ChatCompletionRequest
from stepgraph.integrations.openai.serving import ServingChat, ServingModels
from stepgraph.models.base import DEFAULT_TEMPERATURE


def create_app(graph: Any, *, limits: RouterLimits = SERVER_LIMITS, model_name: str = "stepgraph",
               api_key: str | None = None, temperature: float = DEFAULT_TEMPERATURE, seed: int | None = 0,
               gate: str | None = None, sticky: bool = False, shutdown_grace: float = 25.0) -> FastAPI:
    """The FastAPI app serving ``graph`` as the model ``model_name``.

    Args:
        graph: a compiled stepgraph graph (``default_graph()`` for the shipped pair).
        limits: the operator's limits (build the graph with the same object, so no run can lift them).
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
    models = ServingModels(model_name)
    chat = ServingChat(graph, limits=limits, context=RouterContext(gate=gate, temperature=temperature, seed=seed, sticky=sticky),
                       model_name=model_name, shutdown_grace=shutdown_grace)

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
    async def list_models() -> dict[str, Any]:
        return models.list()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        return await chat.create(req)

    return app


def load_graph(config: Path | None = None, limits: RouterLimits | None = None) -> Any:
    """The graph to serve: the shipped pair with its gates, or the run spec's tiers and gate at ``config``."""
    if config is None:
        from stepgraph.integrations.studio import shipped_graph

        return shipped_graph(limits)
    from stepgraph.graph import build_graph
    from stepgraph.runspec import load_runtime_spec

    spec = load_runtime_spec(config)
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
