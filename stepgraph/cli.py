"""The ``stepgraph`` command, one CLI for the whole library.

    stepgraph solve QUESTION          answer a question with the routed graph
    stepgraph collect | train | evaluate | bench    learn and compare routing policies
    stepgraph overhead | throughput   benchmarks
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stepgraph import __version__
from stepgraph.context import RouterContext
from stepgraph.defaults import DEFAULT_CONFIDENCE_THRESHOLD, default_gate_name, resolve_gate
from stepgraph.errors import StepgraphError
from stepgraph.testbed import BACKENDS, DRAFT_MODEL_DIR, TARGET_MODEL_DIR

GATE_CHOICES = ["policy", "threshold", "steer", "random", "draft", "target"]

SHIPPED_PAIR_SCOPE = """\
The shipped testbed pair (the default --models) is two tiny models trained on one template only:
"NAME has N ITEMS. She gets / finds / buys / gives away / loses / sells K (more) ... She multiplies
them by K ... How many ITEMS does she have?", with 2 to 4 operations. Other phrasings get confident
wrong answers: bring your own models (--models DIR DIR) for real questions."""


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    defaults = RouterContext()
    parser.add_argument(
        "--models",
        nargs="+",
        type=Path,
        default=None,
        metavar="DIR",
        help="Hugging Face model directories, cheapest first, one per tier (default: the shipped testbed pair)",
    )
    parser.add_argument(
        "--gate",
        choices=GATE_CHOICES,
        default=None,
        help=f"routing gate (default: the shipped policy when installed, else threshold; now: {default_gate_name()})",
    )
    parser.add_argument("--policy", type=Path, default=None, help="policy artifact directory for --gate policy (default: the shipped policy)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"--gate threshold: escalate when the STEER confidence is below this (default: {DEFAULT_CONFIDENCE_THRESHOLD}); "
        "--gate steer: posterior threshold (default: 0.5)",
    )
    parser.add_argument("--steer", type=Path, default=None, help="fitted STEER GMM JSON for --gate steer")
    parser.add_argument("--rate", type=float, default=None, help="escalation rate for --gate random (default: 0.5)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="base seed (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="step limit (default: %(default)s)")
    parser.add_argument("--max-step-tokens", type=int, default=defaults.max_step_tokens, help="token limit per step (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=None, help="FLOPs budget per answer (default: none)")
    parser.add_argument("--sticky", action="store_true", help="keep later steps on an escalated tier (default: off)")


def _gate_options(args: argparse.Namespace) -> dict[str, Any]:
    name = args.gate or default_gate_name()
    if name == "policy":
        return {"path": args.policy}
    if name == "threshold":
        return {"threshold": args.threshold}
    if name == "steer":
        return {"path": args.steer, "threshold": args.threshold}
    if name == "random":
        return {"rate": 0.5 if args.rate is None else args.rate, "seed": args.seed}
    return {}


def _context(args: argparse.Namespace) -> RouterContext:
    return RouterContext(
        max_steps=args.max_steps,
        budget_flops=args.budget,
        temperature=args.temperature,
        seed=args.seed,
        sticky=args.sticky,
        max_step_tokens=args.max_step_tokens,
    )


def _question_and_models(args: argparse.Namespace) -> tuple[str, list[Path]]:
    """The question and the tier directories; ``--models a b QUESTION`` gives the question back to the positional."""
    models, question = list(args.models or [DRAFT_MODEL_DIR, TARGET_MODEL_DIR]), args.question
    if question is None and args.models and not models[-1].is_dir():
        question = str(models.pop())
    if question is None:
        raise StepgraphError("Give the question to solve: stepgraph solve QUESTION [options].")
    if len(models) < 2:
        raise StepgraphError("--models needs at least two directories (a draft model and a stronger one).")
    return question, models


def _solve_from_spec(args: argparse.Namespace) -> int:
    """``solve --config SPEC``: the run spec's tiers, gate (checked against the tiers) and sampling; JSON out."""
    from stepgraph.graph import build_graph
    from stepgraph.nodes import validate_question
    from stepgraph.testbed import close_pair
    from stepgraph.training.spec import load_spec

    spec = load_spec(args.config)
    if args.question is None:
        raise StepgraphError(f"Give the question to solve: stepgraph solve --config {args.config} QUESTION.")
    context = spec.context()
    question = validate_question(args.question, context.max_question_chars)  # before any model loads
    tiers = spec.build_tiers()
    try:
        result = build_graph(tiers, spec.build_gate(tiers), prices=spec.prices()).invoke({"question": question}, context=context)
    finally:
        close_pair(tiers)
    keys = ("answer", "stop_reason", "escalations", "totals", "costs", "steps") if args.json else ("answer", "stop_reason", "escalations", "totals", "costs")
    print(json.dumps({k: result[k] for k in keys}, indent=2, default=str))
    return 0


def _solve(args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        return _solve_from_spec(args)
    from stepgraph.graph import build_graph
    from stepgraph.models.local import TransformersStepModel
    from stepgraph.nodes import validate_question

    question, models = _question_and_models(args)
    context = _context(args)
    question = validate_question(question, context.max_question_chars)  # before any model loads
    gate = resolve_gate(args.gate, **_gate_options(args))
    tiers = [TransformersStepModel(path) for path in models]
    graph = build_graph(tiers, gate)
    result = graph.invoke({"question": question}, context=context)
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
        return 0
    names = [m.name for m in tiers]
    print(f"gate: {args.gate or default_gate_name()}   tiers: {' < '.join(names)}")
    for step in result["steps"]:
        conf = step["observation"].get("logit_confidence")
        score = step["gate_score"]
        info = f"conf {conf:.2f}" if conf is not None else "conf n/a"
        info += f", gate {score:.3g}" if score is not None else ""
        print(f"[{step['index'] + 1}] tier {step['tier']} ({step['model']}; {info})")
        if step["escalated"]:
            print(f"    draft replaced: {step['draft']!r}")
        print("    " + step["text"].replace("\n", "\n    "))
    totals = result["totals"]
    print(f"answer: {result['answer']}   (stop: {result['stop_reason']}, escalations: {result['escalations']})")
    print(
        f"cost: {totals['flops']:.3e} FLOPs generated + {totals['prefill_flops']:.3e} prefill, "
        f"{int(totals['output_tokens'])} output tokens, ${totals['usd']:.6f}"
    )
    for tier, cost in sorted(result["costs"].items()):
        print(f"  tier {tier}: {int(cost['calls'])} calls, {cost['flops']:.3e} FLOPs")
    return 0


def _overhead(args: argparse.Namespace) -> int:
    from stepgraph.overhead import measure_overhead

    report = measure_overhead(n_problems=args.problems, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0


def _throughput(args: argparse.Namespace) -> int:
    from stepgraph.throughput import markdown_table, run_throughput

    rows = run_throughput(n_problems=args.problems, batches=args.batch, backends=args.backend, seed=args.seed)
    print(markdown_table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepgraph",
        description="Stepwise model routing: a small model drafts each reasoning step, a gate decides "
        "whether a larger model regenerates it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stepgraph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    solve = sub.add_parser(
        "solve", help="answer a question with the routed graph",
        description="Answer QUESTION step by step: the draft model writes each step, the gate decides whether "
        "a stronger tier rewrites it.\n\n" + SHIPPED_PAIR_SCOPE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    solve.add_argument("question", nargs="?", help="the question to answer")
    solve.add_argument("--json", action="store_true", help="print the graph's final state as JSON")
    solve.add_argument("--config", type=Path, default=None, metavar="SPEC",
                       help="run spec (TOML) giving the tiers, gate and sampling; the other run options are then ignored")
    _add_run_options(solve)
    solve.set_defaults(func=_solve)
    overhead = sub.add_parser(
        "overhead",
        help="benchmark: routing overhead per step as a ratio of one draft call",
        description="Time graph + features + gate per step against the draft model's own call time.",
    )
    overhead.add_argument("--problems", type=int, default=20, help="test-split problems to run (default: %(default)s)")
    overhead.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    overhead.set_defaults(func=_overhead)
    throughput = sub.add_parser(
        "throughput",
        help="benchmark: steps per second and per-step latency of each backend, by batch size",
        description="Run the routed graph on the shipped pair with each backend and batch size, in one process.",
    )
    throughput.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                            help="backends to compare (default: %(default)s)")
    throughput.add_argument("--batch", nargs="+", type=int, default=[1, 16], help="batch sizes (default: %(default)s)")
    throughput.add_argument("--problems", type=int, default=32, help="test-split problems per measurement (default: %(default)s)")
    throughput.add_argument("--seed", type=int, default=0, help="problem seed (default: %(default)s)")
    throughput.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON to this file")
    throughput.set_defaults(func=_throughput)
    from stepgraph.training.commands import add_commands

    add_commands(sub)
    parser.epilog = "Run `stepgraph COMMAND --help` for a command's options and their defaults."
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
        if isinstance(result, dict):  # the offline commands report JSON on stdout
            print(json.dumps(result, indent=2, default=str))
            return 0
        return int(result)
    except StepgraphError as exc:
        print(f"stepgraph: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
