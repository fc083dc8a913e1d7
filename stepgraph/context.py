"""Run settings that stay fixed during a run; nodes read them as ``Runtime[RouterContext]``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RouterContext:
    """Settings of one routed run (LangGraph Studio shows each field's description)."""

    gate: str | None = field(default=None, metadata={"description": "Name of the gate to use among those the graph was built with (default: the graph's default gate)."})
    max_steps: int = field(default=16, metadata={"description": "Stop after this many steps without a final answer."})
    budget_flops: float | None = field(default=None, metadata={"description": "Stop once the answer's FLOPs reach this budget (None: no budget)."})
    temperature: float = field(default=0.7, metadata={"description": "Sampling temperature of every model call (0 = greedy)."})
    seed: int | None = field(default=0, metadata={"description": "Base seed; each call's seed derives from it, the step and the tier (None: random)."})
    sticky: bool = field(default=False, metadata={"description": "Once a step is escalated, later steps are drafted on the escalated tier."})
    max_step_tokens: int = field(default=64, metadata={"description": "Token limit of one step; a step cut at the limit is kept and flagged truncated."})
    difficulty: float | None = field(default=None, metadata={"description": "Optional difficulty estimate in [0, 1] passed to the gate as a feature."})
    max_question_chars: int = field(default=8000, metadata={"description": "Questions longer than this are refused with BadQuestionError."})
