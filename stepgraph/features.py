"""Confidence features of a drafted step: the observation o_t the gates see.

"Math tokens" are the generated tokens that carry the computation: after stripping
whitespace (and a leading byte-level marker such as Qwen's "Ġ"), a token is a math token when
it is non-empty and either starts with a backslash (a LaTeX command such as ``\\boxed{`` or
``\\frac``) or consists only of digits and the symbols ``+ - * / = ^ ( ) [ ] { } . , < >``.
Words, punctuation-only prose and the step break are not. STEER's observation is that the
model's confidence on exactly these tokens separates right from wrong steps; when a step has no
math token at all, every token counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from stepgraph.models.base import StepOutput

MATH_CHARS = frozenset("0123456789+-*/=^()[]{}.,<>")


def is_math_token(token: str) -> bool:
    """Whether a generated token is a math token (see the module docstring)."""
    core = token.replace("Ġ", "").replace("Ċ", "").strip()
    if not core:
        return False
    return core.startswith("\\") or all(c in MATH_CHARS for c in core)


def _math_positions(tokens: Sequence[str]) -> list[int]:
    positions = [i for i, tok in enumerate(tokens) if is_math_token(tok)]
    return positions or list(range(len(tokens)))


def logit_confidence(step: StepOutput) -> float | None:
    """Mean of the per-token max raw logit over math tokens (STEER's score); None without logits."""
    if not step.max_logits:
        return None
    positions = [i for i in _math_positions(step.tokens) if i < len(step.max_logits)]
    return sum(step.max_logits[i] for i in positions) / len(positions) if positions else None


def api_confidence(step: StepOutput) -> float | None:
    """Minimum top-1 probability over math tokens, from top-k logprobs; None without logprobs."""
    positions = [i for i in _math_positions(step.tokens) if i < len(step.top_logprobs) and step.top_logprobs[i]]
    if not positions:
        return None
    return min(math.exp(max(lp for _, lp in step.top_logprobs[i])) for i in positions)


Observation = dict[str, float | None]


class FeatureSchema:
    """A named, versioned list of features; a policy file records the schema it was trained on."""

    def __init__(self, name: str, version: int, names: Sequence[str]) -> None:
        self.name, self.version, self.names = name, version, tuple(names)

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "names": list(self.names)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSchema) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"FeatureSchema({self.name!r}, v{self.version}, {list(self.names)})"

    def vector(self, observation: Observation) -> list[float]:
        """The observation as numbers in schema order; a missing feature becomes NaN."""
        return [float("nan") if observation.get(n) is None else float(observation[n]) for n in self.names]  # type: ignore[arg-type]


CONFIDENCE_SCHEMA = FeatureSchema(
    "stepgraph.confidence",
    1,
    [
        "logit_confidence",  # mean max raw logit over math tokens (STEER)
        "api_confidence",  # min top-1 probability over math tokens (top-k logprobs)
        "step_index",  # 0 for the first step
        "step_tokens",  # generated tokens in the draft step
        "is_final",  # 1 if the draft holds \boxed{} or ended the answer
        "escalations",  # steps escalated so far in this answer
        "difficulty",  # an optional difficulty estimate in [0, 1]; None when unknown
    ],
)


def observe(step: StepOutput, *, step_index: int, escalations: int, difficulty: float | None = None) -> Observation:
    """The observation o_t of a drafted step, keyed by CONFIDENCE_SCHEMA's names."""
    return {
        "logit_confidence": logit_confidence(step),
        "api_confidence": api_confidence(step),
        "step_index": float(step_index),
        "step_tokens": float(step.generated_tokens),
        "is_final": float("\\boxed{" in step.text or step.finished),
        "escalations": float(escalations),
        "difficulty": difficulty,
    }
