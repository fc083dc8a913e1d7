"""The routed graph as an MCP tool server (``stepgraph mcp``), on the official ``mcp`` SDK.

One tool, ``stepwise_reasoner``: typed input (``question``, ``max_steps``) and structured output
(the answer, every step with the tier that wrote it, the cost). Bad input comes back as a tool
error (``isError``) with a message saying what to fix; the server keeps running. Serves stdio
(what MCP clients launch) or streamable HTTP.

Works with the SDK's 1.x (``FastMCP``) and 2.x (``MCPServer``) servers. No ``from __future__
import annotations`` here: the SDK reads the tool's annotations, whose bounds are the operator's.
"""

import dataclasses
import warnings
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from stepgraph.context import SERVER_LIMITS, RouterContext, RouterLimits
from stepgraph.errors import StepgraphError

try:  # mcp >= 2
    from mcp.server.mcpserver import MCPServer as _Server
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP as _Server  # type: ignore[no-redef,import-not-found,attr-defined,unused-ignore]
    from mcp.server.fastmcp.exceptions import ToolError  # type: ignore[no-redef,import-not-found,attr-defined,unused-ignore]

TOOL_NAME = "stepwise_reasoner"
TOOL_DESCRIPTION = (
    "Solve a math word problem step by step: a small model drafts each step and a larger model rewrites the "
    "steps it is unsure of. Returns the answer, each step with the tier that wrote it (0 = small model), "
    "and the compute cost."
)


class RoutedStep(BaseModel):
    """One step of the answer."""

    index: int = Field(description="Position in the answer, from 0.")
    tier: int = Field(description="Tier whose model wrote the step (0 = the draft model).")
    model: str = Field(description="That model's name.")
    escalated: bool = Field(description="Whether the gate sent the step to a stronger tier.")
    text: str = Field(description="The step.")


class RoutedCost(BaseModel):
    """What the answer cost."""

    flops: float = Field(description="Generation FLOPs (2·N per generated token).")
    usd: float = Field(description="API-price estimate in US dollars.")
    output_tokens: int = Field(description="Tokens generated, replaced drafts included.")
    per_tier: dict[str, dict[str, float]] = Field(description="The same numbers by tier.")


class RoutedAnswer(BaseModel):
    """The tool's structured result."""

    answer: str | None = Field(description="The final answer (the \\boxed{} content), None if the run stopped first.")
    stop_reason: str | None = Field(description="final_answer, max_steps or budget.")
    escalations: int = Field(description="Steps rewritten by a stronger tier.")
    in_domain: bool | None = Field(default=None, description="Whether the question is like those the router was calibrated on; "
                                   "false: out of its domain, every step written by the strongest tier, the answer may be wrong; "
                                   "null: unknown.")
    steps: list[RoutedStep]
    cost: RoutedCost


def routed_answer(result: dict[str, Any]) -> RoutedAnswer:
    totals = result.get("totals", {})
    return RoutedAnswer(
        answer=result.get("answer"),
        stop_reason=result.get("stop_reason"),
        escalations=result.get("escalations", 0),
        in_domain=result.get("in_domain"),
        steps=[RoutedStep(index=s["index"], tier=s["tier"], model=s["model"], escalated=s["escalated"], text=s["text"])
               for s in result.get("steps", [])],
        cost=RoutedCost(flops=totals.get("flops", 0.0), usd=totals.get("usd", 0.0),
                        output_tokens=int(totals.get("output_tokens", 0)), per_tier=result.get("costs", {})),
    )


def create_server(graph: Any, *, limits: RouterLimits = SERVER_LIMITS, seed: int | None = 0, gate: str | None = None,
                  max_steps: int | None = None, max_question_chars: int | None = None) -> Any:
    """An MCP server with the ``stepwise_reasoner`` tool over ``graph``.

    Args:
        graph: a compiled stepgraph graph (``default_graph()`` for the shipped tiers).
        limits: the operator's limits (build the graph with the same object): the tool's
            ``max_steps`` may only be lower than ``limits.max_steps``, and questions are at most
            ``limits.max_question_chars`` long.
        seed: base seed of each run (None: random).
        gate: the graph's gate to use (None: its default).
        max_steps: deprecated, use ``limits``.
        max_question_chars: deprecated, use ``limits``.
    """
    if max_steps is not None or max_question_chars is not None:
        warnings.warn("create_server(max_steps=, max_question_chars=) is deprecated: pass limits=RouterLimits(...).",
                      DeprecationWarning, stacklevel=2)
        limits = dataclasses.replace(limits, **{k: v for k, v in {"max_steps": max_steps, "max_question_chars": max_question_chars}.items()
                                                if v is not None})
    server = _Server("stepgraph", instructions=TOOL_DESCRIPTION, log_level="WARNING")  # stderr is the host's log
    step_limit, char_limit = limits.max_steps, limits.max_question_chars

    @server.tool(name=TOOL_NAME, description=TOOL_DESCRIPTION)
    async def stepwise_reasoner(
        question: Annotated[str, Field(min_length=1, max_length=char_limit,
                                       description="A self-contained math word problem.")],
        max_steps: Annotated[int, Field(ge=1, le=step_limit, description="Step limit of the answer.")] = step_limit,
    ) -> RoutedAnswer:
        context = RouterContext(gate=gate, max_steps=max_steps, seed=seed)  # the question length is checked above
        try:
            return routed_answer(await graph.ainvoke({"question": question}, context=context))
        except StepgraphError as exc:  # a message for the caller (the SDK hides other exceptions' text)
            raise ToolError(str(exc)) from exc

    return server


def run(server: Any, transport: Literal["stdio", "streamable-http"] = "stdio", *, host: str = "127.0.0.1",
        port: int = 8000, api_key: str | None = None, max_body_bytes: int = 1 << 20) -> None:
    """Serve until the client closes stdio (or SIGINT/SIGTERM for HTTP).

    Over HTTP, ``ServerGuard`` checks ``api_key`` (``Authorization: Bearer <key>``, when set) and the
    body size before the MCP app reads the body, as ``stepgraph serve`` does.
    """
    if transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    from stepgraph.integrations.operations import ServerGuard

    if hasattr(server, "settings") and hasattr(server.settings, "host"):  # mcp 1.x: host and port are settings
        server.settings.host, server.settings.port = host, port
        app = server.streamable_http_app()
    else:
        app = server.streamable_http_app(host=host)
    guarded = ServerGuard(app, api_key=api_key, max_body_bytes=max_body_bytes, protected=("/mcp",))
    uvicorn.run(guarded, host=host, port=port, log_level="warning")
