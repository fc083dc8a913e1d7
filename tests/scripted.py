"""A scripted StepModel for unit tests: replays given steps with given confidences, no weights."""

from __future__ import annotations

from collections.abc import Sequence

from stepgraph.models.base import StepOutput


class ScriptedModel:
    """Returns ``script[len(steps)]`` as the next step, one token per character.

    Args:
        name: model name.
        n_params: parameter count (drives FLOPs).
        script: the step texts by position; past its end the last one repeats.
        confidence: the max logit reported for every token (or one value per position).
        truncate_at: report every step as cut at this many tokens with no step break.
    """

    def __init__(self, name: str, n_params: int, script: Sequence[str], confidence: float | Sequence[float] = 10.0,
                 truncate_at: int | None = None) -> None:
        self.name, self.n_params, self.script = name, n_params, list(script)
        self.confidence = confidence
        self.truncate_at = truncate_at
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def generate_step(self, question: str, steps: Sequence[str], *, temperature: float = 0.7, seed: int | None = None,
                      max_tokens: int = 64) -> StepOutput:
        self.calls.append((question, tuple(steps)))
        position = min(len(steps), len(self.script) - 1)
        text = self.script[position]
        conf = self.confidence if isinstance(self.confidence, (int, float)) else self.confidence[position]
        tokens = list(text) + ([] if self.truncate_at else ["\n\n"])
        if self.truncate_at:
            tokens = tokens[: self.truncate_at]
            text = "".join(tokens)
        return StepOutput(
            text=text,
            tokens=tokens,
            max_logits=[float(conf)] * len(tokens),
            top_logprobs=[[(t, -0.1)] for t in tokens],
            prompt_tokens=len(question) + sum(len(s) + 2 for s in steps),
            cached_tokens=0,
            generated_tokens=len(tokens),
            finished=False,
            model=self.name,
        )
