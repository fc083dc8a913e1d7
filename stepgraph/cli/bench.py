"""``stepgraph overhead`` and ``stepgraph throughput``: the runtime's own benchmarks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from stepgraph.cli.options import in_range
from stepgraph.testbed import BACKENDS


def add_commands(sub: Any) -> None:
    overhead = sub.add_parser(
        "overhead",
        help="benchmark: routing overhead per step as a ratio of one draft call",
        description="Time graph + features + gate per step against the draft model's own call time.",
    )
    overhead.add_argument("--problems", type=in_range(int, 1), default=20, help="test-split problems to run (default: %(default)s)")
    overhead.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    overhead.set_defaults(func=_overhead)
    throughput = sub.add_parser(
        "throughput",
        help="benchmark: steps per second and per-step latency of each backend, by batch size",
        description="Run the routed graph on the shipped pair with each backend and batch size, in one process.",
    )
    throughput.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                            help="backends to compare (default: %(default)s)")
    throughput.add_argument("--batch", nargs="+", type=in_range(int, 1), default=[1, 16], help="batch sizes (default: %(default)s)")
    throughput.add_argument("--problems", type=in_range(int, 1), default=32, help="test-split problems per measurement (default: %(default)s)")
    throughput.add_argument("--seed", type=int, default=0, help="problem seed (default: %(default)s)")
    throughput.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON to this file")
    throughput.set_defaults(func=_throughput)


def _overhead(args: argparse.Namespace) -> int:
    from stepgraph.benchmarks.overhead import measure_overhead

    print(json.dumps(measure_overhead(n_problems=args.problems, seed=args.seed), indent=2))
    return 0


def _throughput(args: argparse.Namespace) -> int:
    from stepgraph.benchmarks.throughput import markdown_table, run_throughput

    rows = run_throughput(n_problems=args.problems, batches=args.batch, backends=args.backend, seed=args.seed)
    print(markdown_table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))
    return 0
