"""``stepgraph serve`` (the OpenAI-compatible server) and ``stepgraph serve-bench`` (its load benchmark)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from stepgraph.cli.options import API_KEY_ENV, add_graph_options, check_gate, in_range
from stepgraph.context import SERVER_LIMITS, RouterContext, RouterLimits


def add_commands(sub: Any) -> None:
    defaults = RouterContext()
    serve = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server over the routed graph",
        description="Serve the routed graph as an OpenAI-compatible chat-completions API (GET /v1/models, "
        "POST /v1/chat/completions with and without stream, GET /health, /ready, /metrics). The limits are the operator's: "
        "a request can lower max_tokens but never raise a limit.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    serve.add_argument("--model-name", default="stepgraph", help="model id clients send (default: %(default)s)")
    serve.add_argument("--api-key", default=None,
                       help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, else no auth); "
                       "prefer the environment variable, command lines are visible to other users")
    add_graph_options(serve)
    serve.add_argument("--temperature", type=float, default=defaults.temperature,
                       help="default sampling temperature; a request may set its own (default: %(default)s)")
    serve.add_argument("--sticky", action="store_true", help="keep later steps on an escalated tier (default: off)")
    serve.add_argument("--max-step-tokens", type=int, default=defaults.max_step_tokens,
                       help="token limit per step (default: %(default)s)")
    serve.add_argument("--budget", type=float, default=None, help="FLOPs budget per answer (default: none)")
    serve.add_argument("--max-concurrent", type=int, default=SERVER_LIMITS.max_concurrent,
                       help="requests run at once (default: %(default)s)")
    serve.add_argument("--max-queued", type=int, default=SERVER_LIMITS.max_queued,
                       help="requests that may wait for a slot; past that they get 429 (default: %(default)s)")
    serve.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="on SIGTERM, seconds in-flight requests may finish before they are cancelled (default: %(default)s)")
    # Operator options (issue 27): body limit, CORS and conversations across replicas.
    serve.add_argument("--max-body-bytes", type=in_range(int, 1), default=1 << 20,
                       help="larger request bodies get 413 before they are read (default: %(default)s, 1 MiB)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="browser origin allowed by CORS; repeat for more (default: no CORS)")
    serve.add_argument("--checkpointer", default=None, metavar="URL",
                       help="postgresql:// URL of LangGraph's Postgres checkpointer: a thread id (x-stepgraph-thread-id "
                       "header, else the request's 'user') keeps a conversation across replicas (default: none)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                       help="uvicorn log level (default: %(default)s)")
    serve.set_defaults(func=_serve)

    bench = sub.add_parser(
        "serve-bench", help="benchmark: latency and requests/s of a running `stepgraph serve` by client count",
        description=f"Send testbed questions to a running server from 1, 4, 16 ... concurrent clients (the API key, "
        f"if any, from ${API_KEY_ENV}).",
    )
    bench.add_argument("--url", default="http://127.0.0.1:8000", help="server address (default: %(default)s)")
    bench.add_argument("--clients", nargs="+", type=in_range(int, 1), default=[1, 4, 16], help="client counts (default: %(default)s)")
    bench.add_argument("--requests", type=in_range(int, 1), default=64, help="requests per client count (default: %(default)s)")
    bench.add_argument("--model-name", default="stepgraph", help="model id to send (default: %(default)s)")
    bench.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON to this file")
    bench.set_defaults(func=_serve_bench)


def _serve(args: argparse.Namespace) -> int:
    from stepgraph.integrations.openai import create_app, load_served, serve
    from stepgraph.integrations.threads import check_url

    check_gate(args.gate, args.config)
    if args.checkpointer is not None:  # refused before the models load
        check_url(args.checkpointer)
    # One limits object: the graph enforces it on every run and the app runs each request within it.
    limits = RouterLimits(max_question_chars=args.max_question_chars, max_steps=args.max_steps,
                          max_step_tokens=args.max_step_tokens, max_budget_flops=args.budget,
                          max_concurrent=args.max_concurrent, max_queued=args.max_queued)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    graph, tiers = load_served(args.config, limits)
    app = create_app(graph, limits=limits, model_name=args.model_name, api_key=api_key,
                     temperature=args.temperature, seed=args.seed, gate=args.gate, sticky=args.sticky,
                     shutdown_grace=max(0.0, args.shutdown_timeout - 1.0),
                     tiers=tiers, max_body_bytes=args.max_body_bytes, cors_origins=args.cors_origin,
                     checkpointer=args.checkpointer)
    serve(app, host=args.host, port=args.port, shutdown_timeout=args.shutdown_timeout, log_level=args.log_level)
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
