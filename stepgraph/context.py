"""Run settings that stay fixed during a run, and the operator's limits on them.

Nodes read the settings as ``Runtime[RouterContext]``; a client (an SDK call, Studio, the chat
model) chooses them per run. ``RouterLimits`` is given to ``build_graph`` by whoever serves the
graph (and to the OpenAI and MCP servers, which read their own limits from the same object): a
run whose context asks for more than a limit is refused, so a client cannot lift it.

Both are pydantic dataclasses whose field validators are the checks; a bad value raises
ConfigError (a ValueError) naming the field and its allowed values, not pydantic's
ValidationError, so every caller gets the same one-line message.
"""

from __future__ import annotations

import functools
import math
from dataclasses import field
from typing import Any, TypeVar

from pydantic import ConfigDict, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from stepgraph.errors import BadQuestionError, ConfigError
from stepgraph.models.base import DEFAULT_TEMPERATURE

T = TypeVar("T", bound=type)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _raising_config_error(cls: T) -> T:
    """Make ``cls(...)`` raise the validators' ConfigError itself: pydantic wraps a validator's
    ValueError in a ValidationError, whose message is pydantic's, not ours."""
    init = cls.__init__  # type: ignore[misc]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            first = exc.errors()[0]
            error = first.get("ctx", {}).get("error")
            if isinstance(error, ConfigError):
                raise error from None
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ConfigError(f"{cls.__name__}{'.' + where if where else ''}: {first.get('msg')}.") from None

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


# Per RouterContext field: (accepts the value, the allowed values in words).
_RULES: dict[str, tuple[Any, str]] = {
    "gate": (lambda v: v is None or isinstance(v, str), "a gate name (a string) or null"),
    "max_steps": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "budget_flops": (lambda v: v is None or (_number(v) and v > 0), "a finite number > 0, or null for no budget"),
    "temperature": (lambda v: _number(v) and v >= 0, "a finite number ≥ 0"),
    "seed": (lambda v: v is None or _integer(v), "an integer, or null for random"),
    "sticky": (lambda v: isinstance(v, bool), "true or false"),
    "max_step_tokens": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "difficulty": (lambda v: v is None or (_number(v) and 0 <= v <= 1), "a number in [0, 1], or null"),
    "stick_after": (lambda v: v is None or (_integer(v) and v >= 1), "an integer ≥ 1, or null for never"),
    "max_answer_tokens": (lambda v: v is None or (_integer(v) and v >= 1), "an integer ≥ 1, or null for no limit"),
}


def check_setting(name: str, value: Any, what: str | None = None) -> Any:
    """Return ``value`` if it is allowed for the RouterContext field ``name``, else raise ConfigError.

    ``what`` names the value in the message (default: ``RouterContext.<name>``); the CLI checks
    its options with it before any model loads.
    """
    accepts, allowed = _RULES[name]
    if not accepts(value):
        raise ConfigError(f"{what or f'RouterContext.{name}'} must be {allowed}; got {value!r}.")
    return value


@_raising_config_error
@dataclass(config=ConfigDict(extra="forbid"))
class RouterContext:
    """Settings of one routed run (LangGraph Studio shows each field's description).

    Every field is checked at construction; a bad value raises ConfigError naming the field and
    its allowed range.
    """

    gate: str | None = field(default=None, metadata={"description": "Name of the gate to use among those the graph was built with (default: the graph's default gate)."})
    max_steps: int = field(default=16, metadata={"description": "Stop after this many steps without a final answer (≥ 1; the server may set a lower limit)."})
    budget_flops: float | None = field(default=None, metadata={"description": "Stop once the answer's FLOPs reach this budget (> 0; None: no budget)."})
    temperature: float = field(default=DEFAULT_TEMPERATURE, metadata={"description": "Sampling temperature of every model call (≥ 0; 0 = greedy)."})
    seed: int | None = field(default=0, metadata={"description": "Base seed; each call's seed derives from it, the step and the tier (None: random)."})
    sticky: bool = field(default=False, metadata={"description": "Once a step is escalated, later steps are drafted on the escalated tier."})
    max_step_tokens: int = field(default=64, metadata={"description": "Token limit of one step (≥ 1); a step cut at the limit is kept and flagged truncated."})
    difficulty: float | None = field(default=None, metadata={"description": "Optional difficulty estimate in [0, 1] passed to the gate as a feature."})
    stick_after: int | None = field(default=None, metadata={"description": "After this many escalated steps in a row the router is out of its depth: later steps are written by the strongest tier without drafts (None: never)."})
    max_answer_tokens: int | None = field(default=None, metadata={"description": "Token limit of the whole run, regenerations included (≥ 1; None: none): each call generates at most what is left."})

    @field_validator("*", mode="before")
    @classmethod
    def _check(cls, value: Any, info: Any) -> Any:
        return check_setting(info.field_name, value)


def _at_least(low: int, what: str) -> Any:
    def check(cls: Any, value: Any, info: Any) -> Any:
        if not (_integer(value) and value >= low):
            raise ConfigError(f"{what}.{info.field_name} must be an integer ≥ {low}; got {value!r}.")
        return value

    return classmethod(check)


@_raising_config_error
@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class RouterLimits:
    """Limits the operator of a graph sets; no run can lift them. The one limits type: ``build_graph``
    enforces it on every run, and the OpenAI and MCP servers read their own limits from it.

    A run whose question or context goes over a limit is refused with an error naming the limit
    (not clamped: a silently shortened run would look like a real answer). A run without a context
    gets ``RouterContext()``'s defaults, which must then be within the limits too. A server runs
    each request with ``max_steps``, ``max_step_tokens`` and ``max_budget_flops`` themselves
    (a request may ask for fewer tokens).

    Attributes:
        max_question_chars: questions longer than this are refused (BadQuestionError).
        max_steps: the largest ``RouterContext.max_steps`` a run may ask for.
        max_step_tokens: the largest ``RouterContext.max_step_tokens`` a run may ask for.
        max_budget_flops: the largest FLOPs budget a run may ask for; with a limit, a run must
            set a budget (None: no limit).
        max_concurrent: requests a server runs at once.
        max_queued: requests a server lets wait for a slot; past this a request is refused (429).
    """

    max_question_chars: int = 8000
    max_steps: int = 1024
    max_step_tokens: int = 4096
    max_budget_flops: float | None = None
    max_concurrent: int = 4
    max_queued: int = 64

    _positive = field_validator("max_question_chars", "max_steps", "max_step_tokens", "max_concurrent", mode="before")(
        _at_least(1, "RouterLimits"))
    _queued = field_validator("max_queued", mode="before")(_at_least(0, "RouterLimits"))

    @field_validator("max_budget_flops", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        if value is not None and not (_number(value) and value > 0):
            raise ConfigError(f"RouterLimits.max_budget_flops must be a finite number > 0, or None; got {value!r}.")
        return value

    def check(self, context: RouterContext) -> RouterContext:
        """Return ``context`` if it is within these limits, else raise ConfigError naming the limit."""
        for name in ("max_steps", "max_step_tokens"):
            asked, limit = getattr(context, name), getattr(self, name)
            if asked > limit:
                raise ConfigError(f"RouterContext.{name}={asked} is above this graph's limit of {limit} (RouterLimits.{name}, set by its operator).")
        if self.max_budget_flops is not None and (context.budget_flops is None or context.budget_flops > self.max_budget_flops):
            raise ConfigError(
                f"RouterContext.budget_flops={context.budget_flops} is above this graph's limit of {self.max_budget_flops:g} FLOPs "
                "(RouterLimits.max_budget_flops, set by its operator): set a budget within it."
            )
        return context


SERVER_LIMITS = RouterLimits(max_steps=RouterContext().max_steps, max_step_tokens=RouterContext().max_step_tokens)
"""What the OpenAI and MCP servers run each request with unless their operator says otherwise:
the default run's step and token limits."""


def validate_question(question: object, max_chars: int) -> str:
    """Return the question stripped, or raise BadQuestionError saying what is wrong."""
    if not isinstance(question, str):
        raise BadQuestionError(f"The question must be a string, not {type(question).__name__}.")
    if not question.strip():
        raise BadQuestionError("The question is empty: pass the problem text to solve.")
    if len(question) > max_chars:
        raise BadQuestionError(
            f"The question has {len(question)} characters; the limit is {max_chars} (RouterLimits.max_question_chars)."
        )
    return question.strip()
