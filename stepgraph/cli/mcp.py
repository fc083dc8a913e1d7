"""``stepgraph mcp``: the routed-reasoning tool over the Model Context Protocol."""

from __future__ import annotations

import argparse
import os
from typing import Any

from stepgraph.cli.options import API_KEY_ENV, add_graph_options, check_gate
from stepgraph.context import RouterLimits


def add_command(sub: Any) -> None:
    mcp = sub.add_parser(
        "mcp", help="MCP tool server (stdio or streamable HTTP) with the routed-reasoning tool",
        description="Serve the tool 'stepwise_reasoner' (question, max_steps -> answer, steps with tiers, cost) "
        "over the Model Context Protocol.",
    )
    mcp.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio",
                     help="transport (default: %(default)s)")
    mcp.add_argument("--host", default="127.0.0.1", help="address for streamable-http (default: %(default)s)")
    mcp.add_argument("--port", type=int, default=8000, help="port for streamable-http (default: %(default)s)")
    mcp.add_argument("--api-key", default=None,
                     help=f"require 'Authorization: Bearer <key>' over streamable-http (default: ${API_KEY_ENV}, else none)")
    add_graph_options(mcp)
    mcp.set_defaults(func=_mcp)


def _mcp(args: argparse.Namespace) -> int:
    from stepgraph.integrations.mcp_server import create_server, run
    from stepgraph.integrations.openai import load_graph

    check_gate(args.gate, args.config)
    limits = RouterLimits(max_question_chars=args.max_question_chars, max_steps=args.max_steps)
    server = create_server(load_graph(args.config, limits), limits=limits, seed=args.seed, gate=args.gate)
    run(server, args.transport, host=args.host, port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None)
    return 0
