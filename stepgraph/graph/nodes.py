"""The step cycle's nodes: draft → features → gate → (escalate) → append.

Each node is a plain ``state -> partial update`` function bound to the graph's tiers (models,
cheapest first) and gates. A model call's cost is added to the state by the node that made the
call, so a draft that is later replaced is still paid for. The nodes that call models also have
an async variant (``adraft``, ``aescalate``) that awaits the model, so async runs share one
event loop instead of holding a thread each.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from stepgraph.answers import extract_boxed
from stepgraph.context import RouterContext, RouterLimits, validate_question
from stepgraph.domain import Domain, logger, score_question
from stepgraph.errors import BadQuestionError, ConfigError, ContextLimitError, ModelOutputError
from stepgraph.features import observe
from stepgraph.graph.state import RouterState, Step
from stepgraph.models.base import QuestionScore, StepModel, StepOutput, agenerate
from stepgraph.models.costs import Prices, call_cost, total_costs
from stepgraph.routing.gates import ALIASES
from stepgraph.routing.gates.base import Gate, GateInput


def call_seed(base: int | None, step_index: int, tier: int) -> int | None:
    """A per-call seed that differs by step and tier but is fixed by the run's base seed."""
    if base is None:
        return None
    digest = hashlib.sha256(f"{base}:{step_index}:{tier}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


# What draft / escalate return when the prompt no longer fits the model: no candidate, and the
# stop reason that ends the run at ``append`` with the steps accepted so far.
_CONTEXT_LIMIT: dict[str, Any] = {"candidate": None, "stop_reason": "context_limit"}
_DRAFT_CONTEXT_LIMIT: dict[str, Any] = _CONTEXT_LIMIT | {"first_observation": None, "first_decision": None, "decision": None}


class RoutingNodes:
    """The nodes of one routed graph, bound to its tiers, prices and gates.

    Args:
        tiers: models from cheapest (tier 0) to strongest; at least two.
        gates: the gates a run may pick by name (``RouterContext.gate``); the first is the default.
        prices: API prices per tier (default: GPT-4.1-mini prices for every tier).
        limits: the operator's limits on questions and run settings.
    """

    def __init__(self, tiers: Sequence[StepModel], gates: Mapping[str, Gate], prices: Sequence[Prices] | None = None,
                 limits: RouterLimits | None = None) -> None:
        if len(tiers) < 2:
            raise ValueError("A routed graph needs at least two tiers (a draft model and a stronger one).")
        if not gates:
            raise ValueError("A routed graph needs at least one gate.")
        self.tiers = list(tiers)
        self.gates = dict(gates)
        self.prices = list(prices) if prices is not None else [Prices()] * len(self.tiers)
        self.limits = limits or RouterLimits()
        if len(self.prices) != len(self.tiers):
            raise ValueError(f"Got {len(self.prices)} price sets for {len(self.tiers)} tiers.")

    def context(self, runtime: Runtime[RouterContext]) -> RouterContext:
        """The run's settings, refused if they ask for more than the operator's limits."""
        return self.limits.check(runtime.context or RouterContext())

    def gate_for(self, context: RouterContext) -> Gate:
        name = context.gate or next(iter(self.gates))
        if name not in self.gates:  # a former registry name finds the gate under its current one
            name = ALIASES.get(name, name)
        if name not in self.gates:
            raise ConfigError(f"Unknown gate {context.gate!r}; this graph has {sorted(self.gates)}.")
        return self.gates[name]

    def _request(self, state: RouterState, context: RouterContext, tier: int) -> tuple[StepModel, str, list[str], dict[str, Any]]:
        """The model of ``tier`` and what to ask it: question, accepted steps, sampling settings."""
        question = validate_question(state.get("question"), self.limits.max_question_chars)
        question = state.get("task_prompt") or question  # a decomposer's plan rides along with the question
        accepted = [s["text"] for s in state.get("steps", [])]
        settings = {"temperature": context.temperature, "seed": call_seed(context.seed, len(accepted), tier),
                    "max_tokens": self._token_allowance(state, context)}
        return self.tiers[tier], question, accepted, settings

    @staticmethod
    def _tokens_left(state: RouterState, context: RouterContext) -> int | None:
        """What the run's token limit leaves (None: no limit)."""
        if context.max_answer_tokens is None:
            return None
        return max(0, context.max_answer_tokens - int(total_costs(state.get("costs", {}))["output_tokens"]))

    def _token_allowance(self, state: RouterState, context: RouterContext) -> int:
        """This call's token limit: the step limit, lowered to what the run's token limit leaves (at least 1;
        the gate does not escalate once nothing is left, and the caller ends the run)."""
        left = self._tokens_left(state, context)
        return context.max_step_tokens if left is None else max(1, min(context.max_step_tokens, left))

    @staticmethod
    @contextmanager
    def _model_errors(model: StepModel, accepted: Sequence[str]) -> Iterator[None]:
        try:
            yield
        except ContextLimitError as exc:
            if not accepted:
                raise BadQuestionError(f"{model.name} cannot take this question: {exc}") from exc
            raise  # draft / escalate end the run with the steps so far (see _CONTEXT_LIMIT)
        except ValueError as exc:  # a model refusing its input for another reason
            if not accepted:
                raise BadQuestionError(f"{model.name} cannot take this question: {exc}") from exc
            raise ModelOutputError(f"{model.name} failed at step {len(accepted)}: {exc}") from exc

    def _attempt(self, out: StepOutput, model: StepModel, tier: int) -> tuple[StepOutput, dict[str, Any]]:
        if not isinstance(out, StepOutput):  # a backend of the user's that does not keep the protocol
            raise ModelOutputError(f"{model.name}.generate_step returned {type(out).__name__}, not a StepOutput "
                                   "(stepgraph.models.base.StepOutput); fix the backend's return value.")
        cost = call_cost(out, model.n_params, self.prices[tier])
        return out, {"tier": tier, "model": model.name, "text": out.text, "cost": cost}

    def _generate(self, state: RouterState, context: RouterContext, tier: int) -> tuple[StepOutput, dict[str, Any]]:
        model, question, accepted, settings = self._request(state, context, tier)
        with self._model_errors(model, accepted):
            out = model.generate_step(question, accepted, **settings)
        return self._attempt(out, model, tier)

    async def _agenerate(self, state: RouterState, context: RouterContext, tier: int) -> tuple[StepOutput, dict[str, Any]]:
        model, question, accepted, settings = self._request(state, context, tier)
        with self._model_errors(model, accepted):
            out = await agenerate(model, question, accepted, **settings)
        return self._attempt(out, model, tier)

    # --- nodes -------------------------------------------------------------------------------

    def start(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """A new question starts a fresh answer: check it and the settings, score it against the gate's
        domain (``stepgraph.domain``), then reset the trajectory.

        Runs only when an input arrives (``invoke({"question": ...})``), also on a thread that
        holds an earlier answer; ``invoke(None, config)`` resumes an interrupted run past it.
        """
        domain, question = self._domain_of(state, runtime)
        return self._started(domain, None if domain is None else score_question(self.tiers[domain.tier], question))

    async def astart(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """``start``, scoring the question in a worker thread."""
        domain, question = self._domain_of(state, runtime)
        score = None if domain is None else await asyncio.to_thread(score_question, self.tiers[domain.tier], question)
        return self._started(domain, score)

    def _domain_of(self, state: RouterState, runtime: Runtime[RouterContext]) -> tuple[Domain | None, str]:
        """The run's gate's domain (None: the signal is off) and the checked question."""
        gate = self.gate_for(self.context(runtime))  # an unknown gate or a setting over a limit: refused before any paid call
        question = validate_question(state.get("question"), self.limits.max_question_chars)
        domain: Domain | None = getattr(gate, "domain", None)
        if domain is not None and domain.tier >= len(self.tiers):
            logger.warning("in_domain unknown: the gate's domain is scored by tier %d; this graph has %d tiers.", domain.tier, len(self.tiers))
            return None, question
        return domain, question

    def _started(self, domain: Domain | None, score: QuestionScore | None) -> dict[str, Any]:
        """The fresh state of a new question; one out of the domain starts on the strongest tier."""
        in_domain = None if domain is None or score is None else score.mean_logprob >= domain.threshold
        costs = {} if domain is None or score is None else \
            {str(domain.tier): call_cost(score, self.tiers[domain.tier].n_params, self.prices[domain.tier])}
        return {
            "in_domain": in_domain,
            "steps": Overwrite([]),
            "costs": Overwrite(costs),
            "candidate": None,
            "candidate_tier": 0,
            "attempts": [],
            "observation": {},
            "first_observation": None,
            "decision": None,
            "first_decision": None,
            "base_tier": len(self.tiers) - 1 if in_domain is False else 0,  # out of its depth: no drafts from the start
            "escalations": 0,
            "escalation_run": 0,
            "answer": None,
            "stop_reason": None,
            "totals": total_costs(costs),
        }

    def draft(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """The current base tier (or the allocated tier) writes the next step."""
        tier = self.draft_tier(state)
        try:
            return self._drafted(tier, *self._generate(state, self.context(runtime), tier))
        except ContextLimitError:
            return dict(_DRAFT_CONTEXT_LIMIT)

    async def adraft(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """``draft``, awaiting the model."""
        tier = self.draft_tier(state)
        try:
            return self._drafted(tier, *await self._agenerate(state, self.context(runtime), tier))
        except ContextLimitError:
            return dict(_DRAFT_CONTEXT_LIMIT)

    @staticmethod
    def draft_tier(state: RouterState) -> int:
        """The base tier, or the tier an ``allocate`` node chose for this step (graphs with an allocator)."""
        allocated = state.get("allocated_tier")
        return state.get("base_tier", 0) if allocated is None else allocated

    @staticmethod
    def _drafted(tier: int, out: StepOutput, attempt: dict[str, Any]) -> dict[str, Any]:
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
        if state.get("candidate") is None:  # stopped at the context limit: nothing to observe
            return {}
        context = self.context(runtime)
        candidate = StepOutput.from_dict(state["candidate"] or {})
        steps = state.get("steps", [])
        obs = observe(
            candidate,
            step_index=len(steps),
            escalations=state.get("escalations", 0),
            difficulty=context.difficulty,
            question=state["question"],
            prior_steps=[s["text"] for s in steps],
            previous=steps[-1] if steps else None,
        )
        update: dict[str, Any] = {"observation": obs}
        if state.get("first_observation") is None:
            update["first_observation"] = obs
        return update

    def gate(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """Ask the gate whether the next tier should regenerate the candidate."""
        tier = state["candidate_tier"]
        if state.get("candidate") is None:  # stopped at the context limit: nothing to decide
            return {"decision": None}
        if tier >= len(self.tiers) - 1 or self._tokens_left(state, self.context(runtime)) == 0:
            # nothing stronger to escalate to, or no tokens left to regenerate with
            decision = {"escalate": False, "score": None, "mu_escalate": None}
        else:
            gate = self.gate_for(self.context(runtime))
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
        context = self.context(runtime)
        tier = self._escalation_tier(state)
        try:
            return self._escalated(state, context, tier, *self._generate(state, context, tier))
        except ContextLimitError:  # the draft the gate rejected is not kept in its place
            return dict(_CONTEXT_LIMIT)

    async def aescalate(self, state: RouterState, runtime: Runtime[RouterContext]) -> dict[str, Any]:
        """``escalate``, awaiting the model."""
        context = self.context(runtime)
        tier = self._escalation_tier(state)
        try:
            return self._escalated(state, context, tier, *await self._agenerate(state, context, tier))
        except ContextLimitError:  # the draft the gate rejected is not kept in its place
            return dict(_CONTEXT_LIMIT)

    def _escalation_tier(self, state: RouterState) -> int:
        """The tier the gate chose (``GateDecision.tier``), if it is above the candidate's; else the next one up."""
        current = state["candidate_tier"]
        chosen = (state.get("decision") or {}).get("tier")
        if isinstance(chosen, int) and not isinstance(chosen, bool) and chosen > current:
            return min(chosen, len(self.tiers) - 1)
        return current + 1

    @staticmethod
    def _escalated(state: RouterState, context: RouterContext, tier: int, out: StepOutput, attempt: dict[str, Any]) -> dict[str, Any]:
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
        context = self.context(runtime)
        totals = total_costs(state.get("costs", {}))
        chosen = state.get("candidate")
        if chosen is None:  # the next step does not fit: end with the steps so far
            return {"stop_reason": "context_limit", "answer": None, "totals": totals, "attempts": [],
                    "escalations": state.get("escalations", 0)}
        candidate = StepOutput.from_dict(chosen)
        attempts = state.get("attempts", [])
        first_decision = state.get("first_decision") or {}
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
            "gate_reason": first_decision.get("reason"),
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
        update: dict[str, Any] = {}
        # A run of escalated steps says the drafts are out of their depth: stop paying for them.
        run = state.get("escalation_run", 0) + 1 if step["escalated"] else 0
        if context.stick_after is not None and run >= context.stick_after:
            update["base_tier"] = len(self.tiers) - 1
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
            "escalation_run": run,
            **update,
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
