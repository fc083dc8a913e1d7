"""What every tier writes from one prefix: the per-step table that K-tier training replays.

For each step of a collected answer, every tier writes its version of the step from the same
accepted prefix, with the seed the graph gives that tier there (``call_seed(run seed, step,
tier)``), so a tier's entry is the step the routed graph would get from it. Each entry holds the
text, the verifier's verdict, the FLOPs and the observation a gate would see on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stepgraph.training.collection.verifiers import StepVerifier

from stepgraph.context import RouterContext
from stepgraph.features import Observation, observe
from stepgraph.graph.nodes import call_seed
from stepgraph.models.base import StepModel, StepOutput
from stepgraph.models.costs import call_cost


def tier_observation(out: StepOutput, tier: int, *, question: str, prior: Sequence[str], escalations: int,
                     difficulty: float | None) -> Observation:
    """What a gate sees of ``tier``'s step after ``prior``: a stronger tier's step as the graph observes it after the
    one escalation that reaches it, with the question and the accepted steps (so grounding is computed), without
    the previous step's outcome. Collection and ``reobserve`` both observe a tier table's entries by it."""
    return observe(out, step_index=len(prior), escalations=escalations + min(tier, 1), difficulty=difficulty,
                   question=question, prior_steps=list(prior))


def tier_table(tiers: Sequence[StepModel], verifier: StepVerifier, *, question: str, reference: str, prior: Sequence[str],
               seed: int, context: RouterContext, escalations: int) -> list[dict[str, Any]]:
    """Every tier's step after ``prior``, cheapest first, with its verdict, FLOPs and observation.

    ``escalations`` is the run's escalation count before this step; each step is observed by
    ``tier_observation``.
    """
    table = []
    for k, model in enumerate(tiers):
        out = model.generate_step(question, list(prior), temperature=context.temperature, seed=call_seed(seed, len(prior), k),
                                  max_tokens=context.max_step_tokens)
        table.append({
            "tier": k,
            "model": model.name,
            "text": out.text,
            "correct": verifier.verify(question, reference, list(prior), out.text),
            "flops": call_cost(out, model.n_params)["flops"],
            "observation": tier_observation(out, k, question=question, prior=prior, escalations=escalations,
                                            difficulty=context.difficulty),
            "output": out.to_dict(),  # so a later feature schema can be recomputed from the trace
        })
    return table
