"""Option types and option groups the commands share; argparse is imported only in ``stepgraph.cli``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stepgraph.context import RouterContext, RouterLimits, check_setting
from stepgraph.errors import ConfigError
from stepgraph.routing.gates import ALIASES, GATES, canonical_gate_name
from stepgraph.testbed.defaults import TESTBED_GATE_OPTIONS, default_gate_name

GATE_CHOICES = [*GATES, *ALIASES]
"""``--gate`` accepts the registry names and, unlisted, their former names."""

API_KEY_ENV = "STEPGRAPH_API_KEY"


def in_range(kind: type, low: float | None = None, high: float | None = None, *,
             exclusive: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=``: a finite ``kind`` (int or float) within [low, high] ((low, high) if ``exclusive``).

    argparse turns its error into one line naming the option, e.g.
    ``argument --problems: must be an integer >= 1, got '0'``.
    """
    word = "an integer" if kind is int else "a finite number"
    left, right = ("(", ")") if exclusive else ("[", "]")
    if low is not None and high is not None:
        allowed = f"{word} in {left}{low}, {high}{right}"
    elif low is not None:
        allowed = f"{word} {'>' if exclusive else '>='} {low}"
    else:
        allowed = word

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        ok = value is not None and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if exclusive else value >= low
        if ok and high is not None:
            ok = value < high if exclusive else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def setting(name: str, parse: Any) -> Any:
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


def gate_flags() -> dict[str, tuple[type, str]]:
    """Each registered gate option's CLI flag, its type, and a help text naming the gates that read it."""
    by_flag: dict[str, tuple[type, list[str]]] = {}
    for name, cls in GATES.items():
        for key, option in cls.options.items():
            default = TESTBED_GATE_OPTIONS.get(name, {}).get(key)
            shown = "the shipped one" if isinstance(default, Path) else default  # never an install path
            text = f"--gate {name}: {option.help}" + ("" if default is None else f" (default: {shown})")
            by_flag.setdefault(option.flag, (option.type, []))[1].append(text)
    return {flag: (kind, "; ".join(texts)) for flag, (kind, texts) in by_flag.items()}


def gate_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of the chosen gate, read from its flags (unset flags are left to the defaults)."""
    cls = GATES[canonical_gate_name(args.gate or default_gate_name())]
    return {key: getattr(args, option.flag.removeprefix("--").replace("-", "_")) for key, option in cls.options.items()}


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The model, gate and run-setting options of ``solve``; defaults are RouterContext's."""
    defaults = RouterContext()
    parser.add_argument("--models", nargs="+", type=Path, default=None, metavar="DIR",
                        help="Hugging Face model directories, cheapest first, one per tier (default: the shipped testbed tiers, --tiers)")
    parser.add_argument("--gate", choices=GATE_CHOICES, default=None, metavar="{" + ",".join(GATES) + "}",
                        help=f"routing gate (default: the shipped policy when installed, else confidence-threshold; now: "
                        f"{default_gate_name()})")
    for flag, (kind, text) in gate_flags().items():
        if flag != "--seed":  # the run's --seed, below, also seeds a random gate
            parser.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument("--temperature", type=setting("temperature", float), default=defaults.temperature, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="base seed, also of --gate random (default: %(default)s)")
    parser.add_argument("--max-steps", type=setting("max_steps", int), default=defaults.max_steps, help="step limit (default: %(default)s)")
    parser.add_argument("--max-step-tokens", type=setting("max_step_tokens", int), default=defaults.max_step_tokens, help="token limit per step (default: %(default)s)")
    parser.add_argument("--budget", type=setting("budget_flops", float), default=None, help="FLOPs budget per answer (default: none)")
    parser.add_argument("--sticky", action="store_true", help="keep later steps on an escalated tier (default: off)")


def context_of(args: argparse.Namespace) -> RouterContext:
    """The run settings the options give."""
    return RouterContext(max_steps=args.max_steps, budget_flops=args.budget, temperature=args.temperature,
                         seed=args.seed, sticky=args.sticky, max_step_tokens=args.max_step_tokens)


def add_graph_options(parser: argparse.ArgumentParser) -> None:
    """The served graph's options, shared by ``serve`` and ``mcp``."""
    from stepgraph.integrations.studio import STUDIO_GATES

    defaults, limits = RouterContext(), RouterLimits()
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="run spec (TOML) with the tiers and gate (default: the shipped draft, mid and target and their default gate)")
    parser.add_argument("--gate", default=None,
                        help=f"gate of the graph to use: {', '.join(dict.fromkeys((default_gate_name(), *STUDIO_GATES)))} "
                        "for the shipped tiers (default: the graph's default gate)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="base seed of each run (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help="step limit of each answer, also the most a client may ask for (default: %(default)s)")
    parser.add_argument("--max-question-chars", type=int, default=limits.max_question_chars,
                        help="longest question accepted (default: %(default)s)")


def check_gate(name: str | None, config: Path | None) -> None:
    """Refuse a ``--gate`` the shipped graph lacks (its gates' former names still pick them)."""
    from stepgraph.integrations.studio import STUDIO_GATES

    shipped = {default_gate_name(), *STUDIO_GATES}
    if name is not None and config is None and ALIASES.get(name, name) not in shipped:
        raise ConfigError(f"--gate {name!r}: the shipped graph has the gates {sorted(shipped)}.")


def with_options(function: Callable[..., Any]) -> Callable[[argparse.Namespace], Any]:
    """A command handler that calls ``function`` with the parsed options as keyword arguments, so the function it
    runs (a training stage) takes typed parameters, not a namespace; the subcommand names are left out."""
    return lambda args: function(**{k: v for k, v in vars(args).items() if k not in ("func", "command", "stage")})
