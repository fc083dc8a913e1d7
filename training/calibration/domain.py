"""The out-of-domain signal's threshold (``stepgraph.domain``), fitted where κ is calibrated.

``calibrate`` and ``train`` score their calibration questions with one tier (the strongest by
default, ``--domain-tier``) and store the ``--domain-percentile`` of the scores in the artifact's
``domain`` field; ``calibrate --domain-only`` (re)computes that field alone, κ and weights kept.
A tier whose backend cannot score a question leaves the field out: the signal is then off.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from stepgraph.domain import Domain, fit_domain, min_questions, tier_index
from stepgraph.models.base import StepModel
from stepgraph.testbed import close_pair


class DomainArgs(Protocol):
    """The ``--domain-*`` options (``stepgraph.cli.training.add_domain_options``)."""

    domain_percentile: float
    domain_tier: int
    no_domain: bool


def domain_from(args: DomainArgs, tiers: Sequence[StepModel], questions: Sequence[str]) -> Domain | None:
    """The domain of ``questions`` under the tier ``args.domain_tier`` of ``tiers``, as the options ask (None: off)."""
    return _fit(args, tiers, questions) if _wanted(args, questions) else None


def domain_with_tiers(args: DomainArgs, build_tiers: Callable[[], list[Any]] | None, questions: Sequence[str],
                      recorded: Sequence[dict[str, Any]] | None = None, columns: Sequence[int] | None = None) -> Domain | None:
    """``domain_from`` on tiers built for it (and closed after): those of ``columns`` (default: all). None without a way
    to build them, or when they are not the ``recorded`` tiers (the traces' models, by parameter count)."""
    if not _wanted(args, questions):
        return None
    if build_tiers is None:
        print("stepgraph: note: the traces' tiers are not the shipped testbed's: no out-of-domain threshold is written "
              "(give the tiers with --config).", file=sys.stderr)
        return None
    built = build_tiers()
    try:
        if recorded and [t.n_params for t in built] != [r.get("parameters", t.n_params) for r, t in zip(recorded, built)]:
            print("stepgraph: note: the traces were not collected on the tiers this command loads: no out-of-domain threshold "
                  "is written (give the tiers with --config).", file=sys.stderr)
            return None
        return _fit(args, [built[i] for i in columns] if columns is not None else built, questions)
    finally:
        close_pair(built)


def _wanted(args: DomainArgs, questions: Sequence[str]) -> bool:
    """Whether to fit a domain: not turned off, and enough distinct questions for the percentile (else a note says so)."""
    if getattr(args, "no_domain", False):
        return False
    if len(set(questions)) < (needed := min_questions(args.domain_percentile)):
        print(f"stepgraph: note: {len(set(questions))} questions are too few for an out-of-domain threshold at percentile "
              f"{args.domain_percentile:g} (it needs {needed}): none is written, the signal is off.", file=sys.stderr)
        return False
    return True


def _fit(args: DomainArgs, tiers: Sequence[StepModel], questions: Sequence[str]) -> Domain | None:
    tier = tier_index(args.domain_tier, len(tiers))
    domain = fit_domain(tiers[tier], tier, questions, args.domain_percentile)
    if domain is None:
        print(f"stepgraph: note: {tiers[tier].name} cannot score questions (no question_logprob): no out-of-domain threshold "
              "is written, the signal is off.", file=sys.stderr)
    else:
        print(f"stepgraph: out-of-domain threshold: {domain.threshold:.4g} (percentile {domain.percentile:g} of {domain.questions} "
              f"questions' mean token log-likelihood under tier {tier}, {tiers[tier].name})", file=sys.stderr)
    return domain


def build_tiers_for(spec: Any, recorded: Sequence[dict[str, Any]]) -> Callable[[], list[Any]] | None:
    """How to build the ``recorded`` tiers: the run spec's, else the shipped testbed tiers when they are these (by
    parameter count, read from the weights' headers: nothing loads); None otherwise."""
    if spec is not None:
        return spec.build_tiers  # type: ignore[no-any-return]
    from stepgraph.models.vllm_engine import count_parameters  # safetensors headers only; vLLM is not imported
    from stepgraph.testbed import TIER_DIRS, load_tiers

    dirs = TIER_DIRS.get(len(recorded), ())
    if not dirs or any(r.get("parameters") not in (None, count_parameters(d)) for r, d in zip(recorded, dirs)):
        return None
    return lambda: load_tiers(len(recorded))
