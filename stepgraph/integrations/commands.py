"""The ``stepgraph serve`` and ``stepgraph mcp`` commands (servers import only when run)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from stepgraph.context import RouterContext, RouterLimits

API_KEY_ENV = "STEPGRAPH_API_KEY"


def _add_graph_options(parser: argparse.ArgumentParser) -> None:
    defaults = RouterContext()
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="run spec (TOML) with the tiers and gate (default: the shipped pair and its default gate)")
    parser.add_argument("--gate", default=None,
                        help="gate of the graph to use: policy, threshold, draft or target for the shipped pair "
                        "(default: the graph's default gate)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="base seed of each run (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="step limit (default: %(default)s)")
    parser.add_argument("--max-question-chars", type=int, default=RouterLimits().max_question_chars,
                        help="longest question accepted (default: %(default)s)")


def _check_gate(name: str | None, config: Path | None) -> None:
    from stepgraph.defaults import default_gate_name
    from stepgraph.errors import ConfigError

    shipped = {default_gate_name(), "threshold", "draft", "target"}
    if name is not None and config is None and name not in shipped:
        raise ConfigError(f"--gate {name!r}: the shipped graph has the gates {sorted(shipped)}.")


def _router_limits(args: argparse.Namespace, **more: Any) -> RouterLimits:
    """The served graph's own limits from the operator's options, so no request can go past them."""
    return RouterLimits(max_question_chars=args.max_question_chars, max_steps=args.max_steps, **more)


def _serve(args: argparse.Namespace) -> int:
    from stepgraph.integrations.openai_server import ServerLimits, create_app, load_graph, serve

    limits = ServerLimits(max_question_chars=args.max_question_chars, max_steps=args.max_steps,
                          max_step_tokens=args.max_step_tokens, budget_flops=args.budget,
                          max_concurrent=args.max_concurrent, max_queued=args.max_queued)
    _check_gate(args.gate, args.config)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    graph = load_graph(args.config, _router_limits(args, max_step_tokens=args.max_step_tokens))
    app = create_app(graph, limits=limits, model_name=args.model_name, api_key=api_key,
                     temperature=args.temperature, seed=args.seed, gate=args.gate, sticky=args.sticky,
                     shutdown_grace=max(0.0, args.shutdown_timeout - 1.0))
    serve(app, host=args.host, port=args.port, shutdown_timeout=args.shutdown_timeout, log_level=args.log_level)
    return 0


def _mcp(args: argparse.Namespace) -> int:
    from stepgraph.integrations.mcp_server import create_server, run
    from stepgraph.integrations.openai_server import load_graph

    _check_gate(args.gate, args.config)
    server = create_server(load_graph(args.config, _router_limits(args)), max_steps=args.max_steps,
                           max_question_chars=args.max_question_chars, seed=args.seed, gate=args.gate)
    run(server, args.transport, host=args.host, port=args.port)
    return 0


def _serve_bench(args: argparse.Namespace) -> int:
    import json

    from stepgraph.integrations.serve_bench import markdown_table, run_serve_bench

    rows = run_serve_bench(args.url, clients=args.clients, requests=args.requests,
                           api_key=os.environ.get(API_KEY_ENV) or None, model=args.model_name)
    print(markdown_table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))
    return 0


def add_commands(sub: Any) -> None:
    """Add ``serve``, ``serve-bench`` and ``mcp`` to the ``stepgraph`` CLI's subparsers."""
    defaults = RouterContext()
    serve = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server over the routed graph",
        description="Serve the routed graph as an OpenAI-compatible chat-completions API (GET /v1/models, "
        "POST /v1/chat/completions with and without stream, GET /health). The limits are the operator's: "
        "a request can lower max_tokens but never raise a limit.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    serve.add_argument("--model-name", default="stepgraph", help="model id clients send (default: %(default)s)")
    serve.add_argument("--api-key", default=None,
                       help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, else no auth); "
                       "prefer the environment variable, command lines are visible to other users")
    _add_graph_options(serve)
    serve.add_argument("--temperature", type=float, default=defaults.temperature,
                       help="default sampling temperature; a request may set its own (default: %(default)s)")
    serve.add_argument("--sticky", action="store_true", help="keep later steps on an escalated tier (default: off)")
    serve.add_argument("--max-step-tokens", type=int, default=defaults.max_step_tokens,
                       help="token limit per step (default: %(default)s)")
    serve.add_argument("--budget", type=float, default=None, help="FLOPs budget per answer (default: none)")
    serve.add_argument("--max-concurrent", type=int, default=4, help="requests run at once (default: %(default)s)")
    serve.add_argument("--max-queued", type=int, default=64,
                       help="requests that may wait for a slot; past that they get 429 (default: %(default)s)")
    serve.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="on SIGTERM, seconds in-flight requests may finish before they are cancelled (default: %(default)s)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                       help="uvicorn log level (default: %(default)s)")
    serve.set_defaults(func=_serve)

    bench = sub.add_parser(
        "serve-bench", help="benchmark: latency and requests/s of a running `stepgraph serve` by client count",
        description=f"Send testbed questions to a running server from 1, 4, 16 ... concurrent clients (the API key, "
        f"if any, from ${API_KEY_ENV}).",
    )
    bench.add_argument("--url", default="http://127.0.0.1:8000", help="server address (default: %(default)s)")
    bench.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16], help="client counts (default: %(default)s)")
    bench.add_argument("--requests", type=int, default=64, help="requests per client count (default: %(default)s)")
    bench.add_argument("--model-name", default="stepgraph", help="model id to send (default: %(default)s)")
    bench.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON to this file")
    bench.set_defaults(func=_serve_bench)

    mcp = sub.add_parser(
        "mcp", help="MCP tool server (stdio or streamable HTTP) with the routed-reasoning tool",
        description="Serve the tool 'stepwise_reasoner' (question, max_steps -> answer, steps with tiers, cost) "
        "over the Model Context Protocol.",
    )
    mcp.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio",
                     help="transport (default: %(default)s)")
    mcp.add_argument("--host", default="127.0.0.1", help="address for streamable-http (default: %(default)s)")
    mcp.add_argument("--port", type=int, default=8000, help="port for streamable-http (default: %(default)s)")
    _add_graph_options(mcp)
    mcp.set_defaults(func=_mcp)
