"""``stepgraph solve``: answer a question with the routed graph."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stepgraph.cli.options import add_run_options, context_of, gate_options
from stepgraph.context import RouterLimits
from stepgraph.errors import ConfigError, StepgraphError
from stepgraph.routing.gates import canonical_gate_name
from stepgraph.testbed import DEFAULT_TIERS, TIER_DIRS
from stepgraph.testbed.defaults import default_gate_name, resolve_gate

SHIPPED_PAIR_SCOPE = """\
The shipped testbed tiers (the default --models; a 0.30M-parameter draft, a 1.05M mid and a 2.76M
target) answer arithmetic word problems about whole quantities, GSM8K-easy: one to three people,
things they own, buy, make or share, money in whole dollars, rates ("6 pages per day for 7 days"),
containers ("a box holds 12 eggs"), prices and change, sharing equally, comparisons ("5 more than",
"twice as many as", "half as many as"); +, -, x and exact division, one to six steps, values up
to 999. Out of their domain: fractions other than "half", percentages, decimals, unit
conversions, times and ages as quantities, several questions at once. Even in the domain the
target is wrong on some questions (stepgraph/testbed/models/MODEL_CARD.md): bring your own
models (--models DIR DIR, or --config) for real questions. A question the policy's
out-of-domain signal finds unlike its calibration questions gets one warning line on stderr
and is written by the strongest tier alone."""

OUT_OF_DOMAIN = ("stepgraph solve: warning: this question is unlike the questions the router was calibrated on (out of domain), "
                 "so the strongest tier wrote every step and the answer may still be wrong; for such questions use models "
                 "trained on them (--models DIR DIR, or --config).")
"""The one stderr line for a question the out-of-domain signal flags (``stepgraph.domain``)."""

SPEC_CHOOSES = ("gate", "models", "tiers", "allocator")
"""Options a run spec sets itself: given with --config they are refused, not silently ignored."""


def add_command(sub: Any) -> None:
    solve = sub.add_parser(
        "solve", help="answer a question with the routed graph",
        description="Answer QUESTION step by step: the draft model writes each step, the gate decides whether "
        "a stronger tier rewrites it.\n\n" + SHIPPED_PAIR_SCOPE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    solve.add_argument("question", nargs="?", help="the question to answer")
    solve.add_argument("--json", action="store_true", help="print the graph's final state as JSON")
    solve.add_argument("--config", type=Path, default=None, metavar="SPEC",
                       help="run spec (TOML) giving the tiers, gate and sampling; --gate, --models, --tiers and "
                            "--allocator are then refused (set them in the spec), the other run options ignored")
    solve.add_argument("--tiers", type=int, choices=sorted(TIER_DIRS), default=None,
                       help=f"the shipped testbed tiers, each with its shipped policy as --gate policy: 3 (draft, mid, "
                            f"target) or 2 (draft, target) (default: {DEFAULT_TIERS}, the count the bench measured cheaper)")
    solve.add_argument("--allow-other-tiers", action="store_true",
                       help="use a policy trained on other models than --models, with a warning (its coverage does not carry over)")
    solve.add_argument("--allocator", type=Path, default=None, metavar="DIR",
                       help="an allocator artifact (`stepgraph train --allocator`): it picks each step's tier before the "
                            "draft, and the gate still checks the drafts (default: none)")
    add_run_options(solve)
    solve.set_defaults(func=run)


def _question_and_models(args: argparse.Namespace) -> tuple[str, list[Path]]:
    """The question and the model directories, one per tier; ``--models a b QUESTION`` gives the question back to the positional."""
    if args.tiers is not None and args.models:
        raise StepgraphError("--tiers picks the shipped testbed models; give either --tiers or --models.")
    shipped = TIER_DIRS[args.tiers or DEFAULT_TIERS]
    model_dirs, question = list(args.models or shipped), args.question
    if question is None and args.models and not model_dirs[-1].is_dir():
        question = str(model_dirs.pop())
    if question is None:
        raise StepgraphError("Give the question to solve: stepgraph solve QUESTION [options].")
    if len(model_dirs) < 2:
        raise StepgraphError("--models needs at least two directories (a draft model and a stronger one).")
    return question, model_dirs


def _policy_tiers(n_models: int) -> int:
    """Whose shipped policy ``--gate policy`` defaults to: the one for as many tiers, else the default router's
    (for --models of another count, which build_graph then refuses with what to do)."""
    return n_models if n_models in TIER_DIRS else DEFAULT_TIERS


def _solve_from_spec(args: argparse.Namespace) -> int:
    """``solve --config SPEC``: the run spec's tiers, gate (checked against the tiers) and sampling; JSON out."""
    from stepgraph.context import validate_question
    from stepgraph.graph import build_graph
    from stepgraph.runspec import load_runtime_spec
    from stepgraph.testbed import close_pair

    given = [f"--{name}" for name in SPEC_CHOOSES if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} cannot be combined with --config {args.config}: the run spec chooses "
                          "the tiers and the gate; edit its [[tiers]] / [gate] tables, or drop --config.")
    spec = load_runtime_spec(args.config)
    if args.question is None:
        raise StepgraphError(f"Give the question to solve: stepgraph solve --config {args.config} QUESTION.")
    context = spec.context()
    question = validate_question(args.question, RouterLimits().max_question_chars)  # before any model loads
    tiers = spec.build_tiers()
    try:
        result = build_graph(tiers, spec.build_gate(tiers), prices=spec.prices()).invoke({"question": question}, context=context)
    finally:
        close_pair(tiers)
    warn_if_out_of_domain(result)
    keys = ("answer", "stop_reason", "escalations", "in_domain", "totals", "costs", *(("steps",) if args.json else ()))
    print(json.dumps({k: result[k] for k in keys}, indent=2, default=str))
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        return _solve_from_spec(args)
    from stepgraph.context import validate_question

    question, model_dirs = _question_and_models(args)
    context = context_of(args)
    question = validate_question(question, RouterLimits().max_question_chars)  # before the graph and models load
    from stepgraph.graph import build_graph
    from stepgraph.models.local import TransformersStepModel, check_tier_tokenizers

    # The shipped policy for as many tiers as the run has (another count's is refused by build_graph).
    gate = resolve_gate(args.gate, n_tiers=_policy_tiers(len(model_dirs)), **gate_options(args))
    models = [TransformersStepModel(path) for path in model_dirs]  # cheapest first: tier i is models[i]
    check_tier_tokenizers(models)
    allocator = None
    if args.allocator is not None:
        from stepgraph.routing.learned_allocator import LearnedAllocator

        allocator = LearnedAllocator.from_path(args.allocator, [{"name": m.name, "parameters": m.n_params} for m in models])
    graph = build_graph(models, gate, allocator=allocator, allow_other_tiers=args.allow_other_tiers)
    result = graph.invoke({"question": question}, context=context)
    warn_if_out_of_domain(result)
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
        return 0
    names = [m.name for m in models]
    print(f"gate: {canonical_gate_name(args.gate or default_gate_name(_policy_tiers(len(names))))}   tiers: {' < '.join(names)}")
    for step in result["steps"]:
        info = step_confidence(step)
        print(f"[{step['index'] + 1}] tier {step['tier']} ({step['model']}; {info})")
        if step["escalated"]:
            print(f"    draft replaced: {step['draft']!r}")
        print("    " + step["text"].replace("\n", "\n    "))
    totals = result["totals"]
    print(f"answer: {result['answer']}   (stop: {result['stop_reason']}, escalations: {result['escalations']}, "
          f"in domain: {_yes_no(result.get('in_domain'))})")
    print(
        f"cost: {totals['flops']:.3e} FLOPs generated + {totals['prefill_flops']:.3e} prefill, "
        f"{int(totals['output_tokens'])} output tokens, ${totals['usd']:.6f}"
    )
    for tier, cost in sorted(result["costs"].items()):
        print(f"  tier {tier}: {int(cost['calls'])} calls, {cost['flops']:.3e} FLOPs")
    return 0


def _yes_no(flag: bool | None) -> str:
    return "unknown" if flag is None else "yes" if flag else "no"


def warn_if_out_of_domain(result: dict[str, Any]) -> None:
    if result.get("in_domain") is False:
        print(OUT_OF_DOMAIN, file=sys.stderr)


def step_confidence(step: dict[str, Any]) -> str:
    """What the gate saw for a step, attributed to the text it saw (the first draft), never to a replacement."""
    conf = step["observation"].get("logit_confidence")
    shown = f"{conf:.2f}" if conf is not None else "n/a"
    score = step["gate_score"]
    if step["escalated"]:
        return f"draft conf {shown}, gate {score:.3g}: escalated" if score is not None else f"draft conf {shown}: escalated"
    return f"conf {shown}, gate {score:.3g}" if score is not None else f"conf {shown}, no gate decision"
