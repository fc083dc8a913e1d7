"""What a model call costs: FLOPs (the paper's 2·N per generated token), prefill FLOPs, API dollars.

FLOPs follow the paper's convention, 2·N per generated token for a model of N parameters; the
2·N per prompt token that was not served from a prefix cache is reported beside it as
``prefill_flops``. Dollars use per-million-token prices for input, cached input and output
(GPT-4.1-mini defaults).
"""

from __future__ import annotations

from dataclasses import dataclass

from stepgraph.models.base import QuestionScore, StepOutput

COST_KEYS = ("calls", "flops", "prefill_flops", "input_tokens", "cached_tokens", "output_tokens", "usd")


@dataclass(frozen=True)
class Prices:
    """API prices in US dollars per one million tokens (defaults: GPT-4.1-mini)."""

    input: float = 0.40
    """uncached prompt tokens"""
    cached_input: float = 0.10
    """prompt tokens served from the provider's prompt cache"""
    output: float = 1.60
    """generated tokens"""


def call_cost(step: StepOutput | QuestionScore, n_params: int, prices: Prices = Prices()) -> dict[str, float]:
    """The cost of one model call, keyed by COST_KEYS: a generate_step call (StepOutput), or the
    out-of-domain signal's scoring of the question (QuestionScore: a prefill, usually no generated token)."""
    usd = (step.prefill_tokens * prices.input + step.cached_tokens * prices.cached_input + step.generated_tokens * prices.output) / 1e6
    return {
        "calls": 1.0,
        "flops": 2.0 * n_params * step.generated_tokens,
        "prefill_flops": 2.0 * n_params * step.prefill_tokens,
        "input_tokens": float(step.prompt_tokens),
        "cached_tokens": float(step.cached_tokens),
        "output_tokens": float(step.generated_tokens),
        "usd": usd,
    }


def add_costs(left: dict[str, dict[str, float]] | None, right: dict[str, dict[str, float]] | None) -> dict[str, dict[str, float]]:
    """Reducer for per-tier cost totals: {"0": {"flops": ...}, "1": {...}} summed key by key."""
    merged = {tier: dict(values) for tier, values in (left or {}).items()}
    for tier, values in (right or {}).items():
        into = merged.setdefault(tier, dict.fromkeys(COST_KEYS, 0.0))
        for key, value in values.items():
            into[key] = into.get(key, 0.0) + value
    return merged


def total_costs(per_tier: dict[str, dict[str, float]]) -> dict[str, float]:
    """Sum of the per-tier totals."""
    return {key: sum(values.get(key, 0.0) for values in per_tier.values()) for key in COST_KEYS}
