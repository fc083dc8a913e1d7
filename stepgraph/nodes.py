"""The step cycle's nodes: draft → features → gate → (escalate) → append.

Each node is a plain ``state -> partial update`` function bound to the graph's tiers (models,
cheapest first) and gates. A model call's cost is added to the state by the node that made the
call, so a draft that is later replaced is still paid for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal

from langgraph.runtime import Runtime

from stepgraph.answers import extract_boxed
from stepgraph.context import RouterContext
from stepgraph.costs import Prices, call_cost, total_costs
from stepgraph.errors import BadQuestionError, ModelOutputError
from stepgraph.features import observe
from stepgraph.gates.base import Gate, GateInput
from stepgraph.models.base import StepModel, StepOutput
from stepgraph.state import RouterState, Step


def validate_question(question: object, max_chars: int) -> str:
    """Return the question stripped, or raise BadQuestionError saying what is wrong."""
    if not isinstance(question, str):
        raise BadQuestionError(f"The question must be a string, not {type(question).__name__}.")
    if not question.strip():
        raise BadQuestionError("The question is empty: pass the problem text to solve.")
    if len(question) > max_chars:
        raise BadQuestionError(
            f"The question has {len(question)} characters; the limit is {max_chars} (RouterContext.max_question_chars)."
        )
    return question.strip()


def call_seed(base: int | None, step_index: int, tier: int) -> int | None:
    """A per-call seed that differs by step and tier but is fixed by the run's base seed."""
    if base is None:
        return None
    digest = hashlib.sha256(f"{base}:{step_index}:{tier}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class RoutingNodes:
    """The nodes of one routed graph, bound to its tiers, prices and gates.

    Args:
        tiers: models from cheapest (tier 0) to strongest; at least two.
        gates: the gates a run may pick by name (``RouterContext.gate``); the first is the default.
        prices: API prices per tier (default: GPT-4.1-mini prices for every tier).
    """

    def __init__(self, tiers: Sequence[StepModel], gates: Mapping[str, Gate], prices: Sequence[Prices] | None = None) -> None:
        if len(tiers) < 2:
            raise ValueError("A routed graph needs at least two tiers (a draft model and a stronger one).")
        if not gates:
            raise ValueError("A routed graph needs at least one gate.")
        self.tiers = list(tiers)
        self.gates = dict(gates)
        self.prices = list(prices) if prices is not None else [Prices()] * len(self.tiers)
        if len(self.prices) != len(self.tiers):
            raise ValueError(f"Got {len(self.prices)} price sets for {len(self.tiers)} tiers.")

    def gate_for(self, context: RouterContext) -> Gate:
        name = context.gate or next(iter(self.gates))
        if name not in self.gates:
            raise ValueError(f"Unknown gate {name!r}; this graph has {sorted(self.gates)}.")
        return self.gates[name]

    def _generate(self, state: RouterState, context: RouterContext, tier: int) -> tuple[StepOutput, dict[str, Any]]:
        question = validate_question(state.get("question"), context.max_question_chars)
        accepted = [s["text"] for s in state.get("steps", [])]
        model = self.tiers[tier]
        try:
            out = model.generate_step(
                question,
                accepted,
                temperature=context.temperature,
                seed=call_seed(context.seed, len(accepted), tier),
                max_tokens=context.max_step_tokens,
            )
        except ValueError as exc:  # e.g. the prompt exceeds the model's context window
            if not accepted:
                raise BadQuestionError(f"{model.name} cannot take this question: {exc}") from exc
            raise ModelOutputError(f"{model.name} failed at step {len(accepted)}: {exc}") from exc
        cost = call_cost(out, model.n_params, self.prices[tier])
        attempt = {"tier": tier, "model": model.name, "text": out.text, "cost": cost}
        return out, attempt

    # --- nodes -------------------------------------------------------------------------------

    def draft(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """The current base tier writes the next step."""
        tier = state.get("base_tier", 0)
        out, attempt = self._generate(state, runtime.context or RouterContext(), tier)
        return {
            "candidate": out.to_dict(),
            "candidate_tier": tier,
            "attempts": [attempt],
            "first_observation": None,
            "first_decision": None,
            "decision": None,
            "costs": {str(tier): attempt["cost"]},
        }

    def features(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """Turn the latest candidate into the observation o_t."""
        context = runtime.context or RouterContext()
        candidate = StepOutput.from_dict(state["candidate"] or {})
        obs = observe(
            candidate,
            step_index=len(state.get("steps", [])),
            escalations=state.get("escalations", 0),
            difficulty=context.difficulty,
        )
        update: dict[str, Any] = {"observation": obs}
        if state.get("first_observation") is None:
            update["first_observation"] = obs
        return update

    def gate(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """Ask the gate whether the next tier should regenerate the candidate."""
        tier = state["candidate_tier"]
        if tier >= len(self.tiers) - 1:  # nothing stronger to escalate to
            decision = {"escalate": False, "score": None, "mu_escalate": None}
        else:
            gate = self.gate_for(runtime.context or RouterContext())
            x = GateInput(
                question=state["question"],
                steps=tuple(s["text"] for s in state.get("steps", [])),
                draft=StepOutput.from_dict(state["candidate"] or {}),
                observation=state["observation"],
                tier=tier,
            )
            decision = asdict(gate.decide(x))
        update: dict[str, Any] = {"decision": decision}
        if decision.get("cost"):  # a judging gate's own model calls, paid like any other call
            update["costs"] = decision["cost"]
        if state.get("first_decision") is None:
            update["first_decision"] = decision
        return update

    def escalate(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """The next tier regenerates the step from the same prefix."""
        context = runtime.context or RouterContext()
        tier = state["candidate_tier"] + 1
        out, attempt = self._generate(state, context, tier)
        update: dict[str, Any] = {
            "candidate": out.to_dict(),
            "candidate_tier": tier,
            "attempts": state.get("attempts", []) + [attempt],
            "escalations": state.get("escalations", 0) + 1,
            "costs": {str(tier): attempt["cost"]},
        }
        if context.sticky:
            update["base_tier"] = tier
        return update

    def append(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """Add the chosen step to the answer and decide whether the answer is done."""
        context = runtime.context or RouterContext()
        candidate = StepOutput.from_dict(state["candidate"] or {})
        attempts = state.get("attempts", [])
        first_decision = state.get("first_decision") or {}
        totals = total_costs(state.get("costs", {}))
        step: Step = {
            "index": len(state.get("steps", [])),
            "text": candidate.text,
            "tier": state["candidate_tier"],
            "model": candidate.model,
            "escalated": len(attempts) > 1,
            "draft": attempts[0]["text"] if attempts else candidate.text,
            "observation": state.get("first_observation") or {},
            "gate_score": first_decision.get("score"),
            "mu_escalate": first_decision.get("mu_escalate"),
            "truncated": not candidate.finished and candidate.generated_tokens >= context.max_step_tokens,
            "attempts": attempts,
            "flops_so_far": totals["flops"],
        }
        n_steps = step["index"] + 1
        stop_reason = None
        if "\\boxed{" in candidate.text or candidate.finished:
            stop_reason = "final_answer"
        elif n_steps >= context.max_steps:
            stop_reason = "max_steps"
        elif context.budget_flops is not None and totals["flops"] >= context.budget_flops:
            stop_reason = "budget"
        runtime.stream_writer(  # stream_mode="custom": one event per decided step
            {"event": "step", "index": step["index"], "tier": step["tier"], "model": step["model"],
             "text": step["text"], "escalated": step["escalated"], "confidence": step["observation"].get("logit_confidence"),
             "gate_score": step["gate_score"], "flops_so_far": totals["flops"], "usd_so_far": totals["usd"]}
        )
        return {
            "steps": [step],
            "candidate": None,
            "attempts": [],
            "stop_reason": stop_reason,
            "answer": extract_boxed(candidate.text) if stop_reason == "final_answer" else None,
            "totals": totals,
            "escalations": state.get("escalations", 0),
        }

    # --- edges -------------------------------------------------------------------------------

    @staticmethod
    def after_gate(state: RouterState) -> Literal["escalate", "append"]:
        return "escalate" if (state.get("decision") or {}).get("escalate") else "append"

    def after_escalate(self, state: RouterState) -> Literal["features", "append"]:
        # With more than two tiers the gate is asked again on the escalated draft.
        return "features" if state["candidate_tier"] < len(self.tiers) - 1 else "append"

    @staticmethod
    def after_append(state: RouterState) -> Literal["draft", "__end__"]:
        return "__end__" if state.get("stop_reason") else "draft"
