"""``stepgraph regenerate``: every shipped artifact and BENCHMARKS number of the shipped tiers (``training.regenerate``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stepgraph.cli.dataclass_options import add_dataclass_options, dataclass_from_args
from stepgraph.errors import ConfigError


def add_command(sub: Any) -> None:
    from stepgraph.training import regenerate

    r = sub.add_parser("regenerate", help="run every stage that makes a shipped artifact or a BENCHMARKS number (resumable)",
                       description=regenerate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--out", type=Path, required=True, help="directory of every stage's outputs and records (e.g. runs/v2)")
    r.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="run only this stage, even if done (repeatable; default: every stage not yet done)")
    r.add_argument("--list", action="store_true", help="print the stages and their commands, run nothing")
    add_dataclass_options(r, regenerate.Sizes)
    r.set_defaults(func=lambda args: _regenerate(args, sub.choices))


def _regenerate(args: argparse.Namespace, commands: Mapping[str, argparse.ArgumentParser]) -> dict:
    from stepgraph.training import regenerate

    sizes = dataclass_from_args(regenerate.Sizes, args)
    if args.list:
        return {name: "stepgraph " + " ".join(argv) for name, argv in regenerate.stages(args.out, sizes)}
    records = run_stages(args.out, sizes, args.stage, commands)
    return {name: {"seconds": r["seconds"]} for name, r in records.items()}


def run_stages(out: Path, sizes: Any, only: Sequence[str], commands: Mapping[str, argparse.ArgumentParser], *,
               log: Callable[[str], object] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Run every stage not yet done (or only the named ones, done or not), each parsed by ``commands[its command]``
    (the ``stepgraph`` CLI's subcommand parsers); each stage's record by name. A finished stage's record is
    ``out/stages/NAME.json`` (command line, seconds, result) and what it printed ``out/stages/NAME.out``."""
    from stepgraph.training.regenerate import stages

    listed = stages(out, sizes)
    names = [name for name, _ in listed]
    if unknown := [n for n in only if n not in names]:
        raise ConfigError(f"Unknown stage(s) {unknown}; the stages are: {', '.join(names)}.")
    done_dir = out / "stages"
    done_dir.mkdir(parents=True, exist_ok=True)
    records = {}
    for name, argv in listed:
        marker = done_dir / f"{name}.json"
        if (only and name not in only) or (not only and marker.is_file()):
            log(f"regenerate: {name}: skipped ({'done' if marker.is_file() else 'not asked for'})")
            continue
        log(f"regenerate: {name}: stepgraph {' '.join(argv)}")
        started = time.perf_counter()
        args = commands[argv[0]].parse_args(argv[1:])
        with (done_dir / f"{name}.out").open("w") as printed, contextlib.redirect_stdout(printed):  # tables a command prints
            result = args.func(args)
        records[name] = {"argv": argv, "seconds": round(time.perf_counter() - started, 1), "result": result}
        marker.write_text(json.dumps(records[name], indent=1, default=str) + "\n")
        log(f"regenerate: {name}: done in {records[name]['seconds']} s")
    return records
