"""``stepgraph testbed-models``: train the shipped testbed models on CPU, or measure them (``stepgraph.training.testbed_models``).

Its options are parsed by a parser built only when the command runs: the trainer imports
transformers, which would slow every other offline command's start by seconds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stepgraph.cli.dataclass_options import add_dataclass_options


def add_command(sub: Any) -> None:
    """Add ``testbed-models`` to the ``stepgraph`` CLI's subparsers; every argument after it goes to ``run``."""
    command = sub.add_parser("testbed-models", help="train the shipped testbed models on CPU, or measure them (--evaluate-only)",
                             add_help=False, prefix_chars="+")  # no option of its own: "--help" and the rest reach `run`
    command.add_argument("options", nargs=argparse.REMAINDER)
    command.set_defaults(func=lambda args: run(args.options))


def run(argv: Sequence[str]) -> int:
    from stepgraph.training import testbed_models as tm

    parser = argparse.ArgumentParser(prog="stepgraph testbed-models", description=tm.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=tm.TASKS, default=tm.Args.task, help="default: %(default)s")
    parser.add_argument("--which", choices=["draft", "mid", "target", "both"], default=tm.Args.which, help="model(s) to train (default: %(default)s)")
    parser.add_argument("--draft-stop-at", type=int, default=None, help="stop the draft at this step (default: --steps-draft)")
    parser.add_argument("--mid-stop-at", type=int, default=None, help="stop the mid model at this step (default: --steps-mid)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="use this saved tokenizer (e.g. <out>/target-tokenizer) instead of building one")
    add_dataclass_options(parser, tm.Args, skip=("task", "which", "draft_stop_at", "mid_stop_at", "tokenizer"))
    tm.main(tm.Args(**vars(parser.parse_args(argv))))
    return 0
