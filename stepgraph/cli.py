"""The ``stepgraph`` command, one CLI for the whole library.

    stepgraph solve QUESTION          answer a question with the routed graph
    stepgraph collect | train | evaluate | bench    learn and compare routing policies
    stepgraph overhead | throughput   benchmarks
    stepgraph serve | mcp             OpenAI-compatible HTTP server, MCP tool server
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stepgraph import __version__
from stepgraph.context import RouterContext, RouterLimits, check_setting
from stepgraph.errors import ConfigError, StepgraphError
from stepgraph.gates import ALIASES, GATES, canonical_gate_name
from stepgraph.options import in_range
from stepgraph.testbed import BACKENDS, DRAFT_MODEL_DIR, MID_MODEL_DIR, TARGET_MODEL_DIR
from stepgraph.testbed.defaults import TESTBED_GATE_OPTIONS, THREE_TIER_POLICY_DIR, default_gate_name, resolve_gate

GATE_CHOICES = [*GATES, *ALIASES]
"""``--gate`` accepts the registry names and their former names."""

SHIPPED_PAIR_SCOPE = """\
The shipped testbed pair (the default --models) is two tiny models trained on one template only:
"NAME has N ITEMS. She gets / finds / buys / gives away / loses / sells K (more) ... She multiplies
them by K ... How many ITEMS does she have?", with 2 to 4 operations. Other phrasings get confident
wrong answers: bring your own models (--models DIR DIR) for real questions."""


def _setting(name: str, parse: Any) -> Any:
    """An argparse ``type`` that parses the option and checks it as RouterContext checks ``name``, so
    a bad value exits 2 with a one-line message naming the option, before any model loads."""

    def convert(text: str) -> Any:
        value = parse(text)  # a ValueError here gets argparse's own "invalid int value" message
        try:
            return check_setting(name, value, what="the value")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


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
        metavar="{" + ",".join(GATES) + "}",
        help=f"routing gate (default: the shipped policy when installed, else confidence-threshold; now: "
        f"{default_gate_name()}; former names {', '.join(f'{a}={n}' for a, n in ALIASES.items())} still work)",
    )
    for flag, (kind, text) in _gate_flags().items():
        if flag != "--seed":  # the run's --seed, below, also seeds a random gate
            parser.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument("--temperature", type=_setting("temperature", float), default=defaults.temperature, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="base seed, also of --gate random (default: %(default)s)")
    parser.add_argument("--max-steps", type=_setting("max_steps", int), default=defaults.max_steps, help="step limit (default: %(default)s)")
    parser.add_argument("--max-step-tokens", type=_setting("max_step_tokens", int), default=defaults.max_step_tokens, help="token limit per step (default: %(default)s)")
    parser.add_argument("--budget", type=_setting("budget_flops", float), default=None, help="FLOPs budget per answer (default: none)")
    parser.add_argument("--sticky", action="store_true", help="keep later steps on an escalated tier (default: off)")


def _gate_flags() -> dict[str, tuple[type, str]]:
    """Each registered gate option's CLI flag, its type, and a help text naming the gates that read it."""
    by_flag: dict[str, tuple[type, list[str]]] = {}
    for name, cls in GATES.items():
        for key, option in cls.options.items():
            default = TESTBED_GATE_OPTIONS.get(name, {}).get(key)
            shown = "the shipped one" if isinstance(default, Path) else default  # never an install path
            text = f"--gate {name}: {option.help}" + ("" if default is None else f" (default: {shown})")
            by_flag.setdefault(option.flag, (option.type, []))[1].append(text)
    return {flag: (kind, "; ".join(texts)) for flag, (kind, texts) in by_flag.items()}


def _gate_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of the chosen gate, read from its flags (unset flags are left to the defaults)."""
    cls = GATES[canonical_gate_name(args.gate or default_gate_name())]
    return {key: getattr(args, option.flag.removeprefix("--").replace("-", "_")) for key, option in cls.options.items()}


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
    """The question and the model directories, one per tier; ``--models a b QUESTION`` gives the question back to the positional."""
    if args.tiers is not None and args.models:
        raise StepgraphError("--tiers picks the shipped testbed models; give either --tiers or --models.")
    shipped = [DRAFT_MODEL_DIR, MID_MODEL_DIR, TARGET_MODEL_DIR] if args.tiers == 3 else [DRAFT_MODEL_DIR, TARGET_MODEL_DIR]
    model_dirs, question = list(args.models or shipped), args.question
    if question is None and args.models and not model_dirs[-1].is_dir():
        question = str(model_dirs.pop())
    if question is None:
        raise StepgraphError("Give the question to solve: stepgraph solve QUESTION [options].")
    if len(model_dirs) < 2:
        raise StepgraphError("--models needs at least two directories (a draft model and a stronger one).")
    return question, model_dirs


def _solve_from_spec(args: argparse.Namespace) -> int:
    """``solve --config SPEC``: the run spec's tiers, gate (checked against the tiers) and sampling; JSON out."""
    from stepgraph.context import validate_question
    from stepgraph.graph import build_graph
    from stepgraph.testbed import close_pair
    from stepgraph.training.spec import load_spec

    spec = load_spec(args.config)
    if args.question is None:
        raise StepgraphError(f"Give the question to solve: stepgraph solve --config {args.config} QUESTION.")
    context = spec.context()
    question = validate_question(args.question, RouterLimits().max_question_chars)  # before any model loads
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
    from stepgraph.context import validate_question

    question, model_dirs = _question_and_models(args)
    context = _context(args)
    question = validate_question(question, RouterLimits().max_question_chars)  # before the graph and models load
    from stepgraph.graph import build_graph
    from stepgraph.models.local import TransformersStepModel, check_tier_tokenizers

    options = _gate_options(args)
    if args.tiers == 3 and canonical_gate_name(args.gate or default_gate_name()) == "policy" and options.get("path") is None:
        options["path"] = THREE_TIER_POLICY_DIR  # the 2-tier default policy is refused on three tiers
    gate = resolve_gate(args.gate, **options)
    models = [TransformersStepModel(path) for path in model_dirs]  # cheapest first: tier i is models[i]
    check_tier_tokenizers(models)
    allocator = None
    if args.allocator is not None:
        from stepgraph.allocator_file import LearnedAllocator

        allocator = LearnedAllocator.from_path(args.allocator, [{"name": m.name, "parameters": m.n_params} for m in models])
    graph = build_graph(models, gate, allocator=allocator, allow_other_tiers=args.allow_other_tiers)
    result = graph.invoke({"question": question}, context=context)
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
        return 0
    names = [m.name for m in models]
    print(f"gate: {canonical_gate_name(args.gate or default_gate_name())}   tiers: {' < '.join(names)}")
    for step in result["steps"]:
        info = _step_confidence(step)
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


def _step_confidence(step: dict[str, Any]) -> str:
    """What the gate saw for a step, attributed to the text it saw (the first draft), never to a replacement."""
    conf = step["observation"].get("logit_confidence")
    shown = f"{conf:.2f}" if conf is not None else "n/a"
    score = step["gate_score"]
    if step["escalated"]:
        return f"draft conf {shown}, gate {score:.3g}: escalated" if score is not None else f"draft conf {shown}: escalated"
    return f"conf {shown}, gate {score:.3g}" if score is not None else f"conf {shown}, no gate decision"


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


RUNTIME_COMMANDS = ("solve", "overhead", "throughput", "serve", "serve-bench", "mcp")


def build_parser(offline: bool = True) -> argparse.ArgumentParser:
    """The CLI's parser; ``offline=False`` leaves out collect/train/evaluate/bench, whose
    imports (the trainer, math-verify, LangChain) would slow a ``solve`` down by seconds."""
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
    solve.add_argument("--tiers", type=int, choices=[2, 3], default=None,
                       help="the shipped testbed tiers: 2 (draft, target; the default) or 3 (draft, mid, target, "
                            "with the shipped 3-tier policy as --gate policy)")
    solve.add_argument("--allow-other-tiers", action="store_true",
                       help="use a policy trained on other models than --models, with a warning (its coverage does not carry over)")
    solve.add_argument("--allocator", type=Path, default=None, metavar="DIR",
                       help="an allocator artifact (`stepgraph train --allocator`): it picks each step's tier before the "
                            "draft, and the gate still checks the drafts (default: none)")
    _add_run_options(solve)
    solve.set_defaults(func=_solve)
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
    if offline:
        from stepgraph.training.commands import add_commands

        add_commands(sub)
    from stepgraph.integrations.commands import add_commands as add_server_commands  # imports its servers only when run

    add_server_commands(sub)
    parser.epilog = "Run `stepgraph COMMAND --help` for a command's options and their defaults."
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(offline=not argv or argv[0] not in RUNTIME_COMMANDS).parse_args(argv)
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
