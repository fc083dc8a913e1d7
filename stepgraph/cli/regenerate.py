"""``stepgraph regenerate``: every shipped artifact and BENCHMARKS number of the shipped tiers (``training.regenerate``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stepgraph.cli.commands import add_offline_commands
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
    r.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run up to N stages at once, each in its own process once the stages it reads have finished "
                        "(default: 1, one after another in this process); use at most one per CPU core")
    add_dataclass_options(r, regenerate.Sizes)
    r.set_defaults(func=lambda args: _regenerate(args, sub))


def _regenerate(args: argparse.Namespace, sub: argparse._SubParsersAction) -> dict:
    from stepgraph.training import regenerate

    sizes = dataclass_from_args(regenerate.Sizes, args)
    if args.list:
        return {name: "stepgraph " + " ".join(argv) for name, argv in regenerate.stages(args.out, sizes)}
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}.")
    if args.jobs == 1:  # the stages run in this process: parse them with their commands (offline ones are added lazily)
        add_offline_commands(sub, (argv[0] for _, argv in regenerate.stages(args.out, sizes)))
    records = run_stages(args.out, sizes, args.stage, sub.choices, jobs=args.jobs)
    return {name: {"seconds": r["seconds"]} for name, r in records.items()}


def run_stages(out: Path, sizes: Any, only: Sequence[str], commands: Mapping[str, argparse.ArgumentParser], *, jobs: int = 1,
               log: Callable[[str], object] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Run every stage not yet done (or only the named ones, done or not), each parsed by ``commands[its command]``
    (the ``stepgraph`` CLI's subcommand parsers); each stage's record by name. A finished stage's record is
    ``out/stages/NAME.json`` (command line, seconds, result) and what it printed ``out/stages/NAME.out``.
    With ``jobs`` > 1 the stages run as ``python -m stepgraph`` processes, up to ``jobs`` at once, each once
    the stages it depends on (``regenerate.dependencies``) are done; their progress goes to ``NAME.err``."""
    from stepgraph.training.regenerate import stages

    listed = stages(out, sizes)
    names = [name for name, _ in listed]
    if unknown := [n for n in only if n not in names]:
        raise ConfigError(f"Unknown stage(s) {unknown}; the stages are: {', '.join(names)}.")
    done_dir = out / "stages"
    done_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for name in names:
        marker = done_dir / f"{name}.json"
        if (only and name not in only) or (not only and marker.is_file()):
            log(f"regenerate: {name}: skipped ({'done' if marker.is_file() else 'not asked for'})")
        else:
            todo.append(name)
    if jobs > 1:
        return _run_side_by_side(listed, todo, done_dir, jobs, log)
    records = {}
    for name, argv in listed:
        if name not in todo:
            continue
        log(f"regenerate: {name}: stepgraph {' '.join(argv)}")
        started = time.perf_counter()
        args = commands[argv[0]].parse_args(argv[1:])
        with (done_dir / f"{name}.out").open("w") as printed, contextlib.redirect_stdout(printed):  # tables a command prints
            result = args.func(args)
        records[name] = _finished(done_dir, name, argv, started, result)
        log(f"regenerate: {name}: done in {records[name]['seconds']} s")
    return records


def _finished(done_dir: Path, name: str, argv: list[str], started: float, result: Any) -> dict[str, Any]:
    record = {"argv": argv, "seconds": round(time.perf_counter() - started, 1), "result": result}
    (done_dir / f"{name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record


def _run_side_by_side(listed: list[tuple[str, list[str]]], todo: list[str], done_dir: Path, jobs: int,
                      log: Callable[[str], object]) -> dict[str, Any]:
    from stepgraph.training.regenerate import dependencies

    argv_of, after = dict(listed), dependencies(listed)
    pending, records = list(todo), {}
    running: dict[str, tuple[subprocess.Popen, float, Any, Any]] = {}  # name: (process, start, stdout, stderr files)
    failed: list[str] = []
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # N single-threaded stages on N cores, unless the caller says otherwise
    # SIGTERM (kill, a CI timeout) ends this process without a finally: turn it into SystemExit, so that the finally
    # below stops the stages it started instead of leaving them running as orphans. Only the main thread may set it.
    main_thread = threading.current_thread() is threading.main_thread()
    on_term = signal.signal(signal.SIGTERM, _exit_on_signal) if main_thread else None
    try:
        while pending or running:
            while len(running) < jobs and not failed:
                ready = next((n for n in pending if not after[n] & (set(pending) | running.keys())), None)
                if ready is None:
                    break
                pending.remove(ready)
                log(f"regenerate: {ready}: stepgraph {' '.join(argv_of[ready])} (started)")
                printed, progress = (done_dir / f"{ready}.out").open("w"), (done_dir / f"{ready}.err").open("w")
                process = subprocess.Popen([sys.executable, "-m", "stepgraph", *argv_of[ready]], stdout=printed,
                                           stderr=progress, stdin=subprocess.DEVNULL, env=env)
                running[ready] = (process, time.perf_counter(), printed, progress)
            if not running:
                break
            time.sleep(0.5)
            for name, (process, started, printed, progress) in list(running.items()):
                if process.poll() is None:
                    continue
                printed.close()
                progress.close()
                del running[name]
                if process.returncode:
                    failed.append(name)
                    log(f"regenerate: {name}: failed (exit {process.returncode}); see {done_dir / (name + '.err')}")
                    continue
                records[name] = _finished(done_dir, name, argv_of[name], started, _printed_result(done_dir / f"{name}.out"))
                log(f"regenerate: {name}: done in {records[name]['seconds']} s")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, on_term)
        for process, *_ in running.values():  # interrupted: no stage keeps running unrecorded
            process.terminate()
            process.wait()
    if failed:
        raise ConfigError(f"Stage(s) {failed} failed (their output: {done_dir}/NAME.err); the stages that finished are "
                          f"recorded, so running the same command again resumes after fixing the cause.")
    return records


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _printed_result(path: Path) -> Any:
    """The JSON report a ``stepgraph`` offline command prints last (after any tables), or None."""
    text = path.read_text()
    try:
        return json.loads(text[text.rfind("\n{") + 1:])  # rfind's -1 + 1 is the start: a report alone
    except json.JSONDecodeError:
        return None
