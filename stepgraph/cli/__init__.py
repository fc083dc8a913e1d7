"""The ``stepgraph`` command, one CLI for the whole library; argparse lives here only.

    stepgraph solve QUESTION          answer a question with the routed graph      (cli/solve.py)
    stepgraph collect | train | calibrate | evaluate | bench    learn and compare routing policies (cli/training.py)
    stepgraph radar STAGE             RADAR's query-level router, offline          (cli/radar.py)
    stepgraph reobserve | signals | policy-check | bench-allocator | taxonomy    studies (cli/studies.py)
    stepgraph testbed-models          train the shipped testbed models             (cli/testbed_models.py)
    stepgraph regenerate              every shipped artifact and benchmark, resumable (cli/regenerate.py)
    stepgraph overhead | throughput   benchmarks                                   (cli/bench.py)
    stepgraph serve | serve-bench     OpenAI-compatible HTTP server, its benchmark (cli/serve.py)
    stepgraph mcp                     MCP tool server                              (cli/mcp.py)

The offline commands' modules (training, radar, studies, testbed_models, regenerate) are imported only for a command line
that is not one of ``RUNTIME_COMMANDS``, so ``solve`` starts fast, and an offline command line imports only its own
module (``stepgraph.cli.commands``): ``stepgraph regenerate`` does not load torch to start its stages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import NoReturn

from stepgraph import __version__
from stepgraph.cli import bench, mcp, serve, solve
from stepgraph.cli.commands import OFFLINE_COMMANDS, add_offline_commands, is_offline
from stepgraph.cli.options import GATE_CHOICES
from stepgraph.cli.options import gate_options as _gate_options
from stepgraph.cli.solve import step_confidence as _step_confidence
from stepgraph.errors import StepgraphError

__all__ = ["GATE_CHOICES", "OFFLINE_COMMANDS", "RUNTIME_COMMANDS", "_gate_options", "_step_confidence", "add_offline_commands", "build_parser", "main", "run_old_path"]

RUNTIME_COMMANDS = ("solve", "overhead", "throughput", "serve", "serve-bench", "mcp")


def build_parser(offline: bool | str = True) -> argparse.ArgumentParser:
    """The CLI's parser; ``offline=False`` leaves out collect/train/evaluate/bench, radar and the studies,
    whose imports (the trainer, math-verify, LangChain) would slow a ``solve`` down by seconds; ``offline="collect"``
    (an offline command) adds only the commands of that command's module (``stepgraph.cli.commands``)."""
    parser = argparse.ArgumentParser(
        prog="stepgraph",
        description="Stepwise model routing: a small model drafts each reasoning step, a gate decides "
        "whether a larger model regenerates it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stepgraph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    solve.add_command(sub)
    bench.add_commands(sub)
    every = [command for commands in OFFLINE_COMMANDS.values() for command in commands]
    add_offline_commands(sub, every if offline is True else [offline] if offline else [])
    serve.add_commands(sub)
    mcp.add_command(sub)
    parser.epilog = "Run `stepgraph COMMAND --help` for a command's options and their defaults."
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else ""
    args = build_parser(offline=command if is_offline(command) else command not in RUNTIME_COMMANDS).parse_args(argv)
    try:
        result = args.func(args)
        if isinstance(result, dict):  # the offline commands report JSON on stdout
            print(json.dumps(result, indent=2, default=str), flush=True)
            return 0
        return int(result)
    except StepgraphError as exc:
        print(f"stepgraph: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `stepgraph ... | head`: the reader left; end quietly, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else flushing stdout at exit fails again
        return 1


def run_old_path(module: str, command: str) -> NoReturn:
    """``python -m MODULE ...``, a training module's old entry point: runs ``stepgraph COMMAND ...``, with a DeprecationWarning."""
    warnings.warn(f"`python -m {module}` is now `stepgraph {command}`; the old path will be removed", DeprecationWarning, stacklevel=2)
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
