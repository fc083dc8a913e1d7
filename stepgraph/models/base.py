"""The one interface every model backend implements: write the next reasoning step."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

STEP_SEPARATOR = "\n\n"
DEFAULT_TEMPERATURE = 0.7
"""The sampling temperature every call uses unless told otherwise (the paper's value); the one place it is written."""


@dataclass(frozen=True)
class StepOutput:
    """One generated step with the statistics the confidence features are computed from.

    Attributes:
        text: the step, without the blank line that ends it.
        tokens: the generated tokens' strings, in order (the step break token included).
        max_logits: per generated token, the largest raw (unnormalised) logit; None where the
            backend exposes only log-probabilities (e.g. the OpenAI API).
        top_logprobs: per generated token, the k most likely (token, log-probability) pairs.
        token_logprobs: per generated token, the log-probability of the token that was sampled,
            under the model's own distribution at temperature 1 (the same scale as
            ``top_logprobs``, not the tempered sampling distribution), so a slip sampled off the
            model's top choice shows up; None where the backend does not report it (raw-logit
            modes, older traces).
        prompt_tokens: tokens in the prompt this call was given.
        cached_tokens: prompt tokens whose keys/values were reused from a cache.
        generated_tokens: tokens this call generated.
        finished: the model ended the whole answer (end-of-sequence), not just the step.
        model: name of the model that wrote it.
    """

    text: str
    tokens: list[str]
    max_logits: list[float] | None
    top_logprobs: list[list[tuple[str, float]]]
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    finished: bool
    model: str
    extra: dict[str, Any] = field(default_factory=dict)
    token_logprobs: list[float] | None = None

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens that had to be computed (not served from a cache)."""
        return self.prompt_tokens - self.cached_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepOutput:
        data = dict(data)
        data["top_logprobs"] = [[(str(t), float(lp)) for t, lp in pos] for pos in data["top_logprobs"]]
        if data.get("token_logprobs") is not None:
            data["token_logprobs"] = [float(lp) for lp in data["token_logprobs"]]
        return cls(**data)


@dataclass(frozen=True)
class QuestionScore:
    """How likely a model finds a question: the out-of-domain signal's statistic, and what reading it cost.

    Attributes:
        mean_logprob: the mean log-likelihood of the question's tokens (inside the model's chat
            prompt), each given the tokens before it; unusual text scores low.
        question_tokens: how many tokens the mean is over.
        prompt_tokens: tokens the call read (the prompt up to the question's end, at least).
        cached_tokens: of those, tokens served from a prefix cache.
        generated_tokens: tokens the call generated (a server may have to generate one).
    """

    mean_logprob: float
    question_tokens: int
    prompt_tokens: int
    cached_tokens: int = 0
    generated_tokens: int = 0

    @property
    def prefill_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


@runtime_checkable
class StepModel(Protocol):
    """A model that continues a chain-of-thought answer by one step.

    A backend with a native asynchronous client may also implement ``agenerate_step`` (see
    ``AsyncStepModel``); the graph's async runs (``ainvoke``, ``abatch``, ``astream``) then await
    it instead of holding a thread per call. ``agenerate`` picks whichever the model has.

    A backend may also implement ``question_logprob(question) -> QuestionScore | None`` (see
    ``ScoringStepModel``), the statistic of the out-of-domain signal (``stepgraph.domain``); a
    backend without it, or returning None, leaves the signal off.
    """

    name: str

    @property
    def n_params(self) -> int:
        """The model's parameter count, for FLOPs (a plain attribute satisfies it)."""
        ...

    def generate_step(
        self,
        question: str,
        steps: Sequence[str],
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        seed: int | None = None,
        max_tokens: int = 64,
    ) -> StepOutput:
        """Write the step that follows ``steps`` in the answer to ``question``."""
        ...


@runtime_checkable
class AsyncStepModel(StepModel, Protocol):
    """A StepModel that can also write a step without blocking the event loop."""

    async def agenerate_step(
        self,
        question: str,
        steps: Sequence[str],
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        seed: int | None = None,
        max_tokens: int = 64,
    ) -> StepOutput:
        """The asynchronous ``generate_step``: same arguments, same result."""
        ...


@runtime_checkable
class ScoringStepModel(StepModel, Protocol):
    """A StepModel that can say how likely it finds a question (the out-of-domain signal's statistic)."""

    def question_logprob(self, question: str) -> QuestionScore | None:
        """The mean log-likelihood of ``question``'s tokens in this model's prompt, or None where the backend cannot tell."""
        ...


def question_span(tokenizer: Any, prompt: str, question: str) -> tuple[int, int]:
    """The token positions [start, end) of ``question`` inside ``prompt``'s tokens, start ≥ 1 (a scored token has a token before it).

    Counted by tokenizing the prompt up to the question's start and end: chat templates put the
    question between a line break and a special token, where no token spans the boundary.

    Raises:
        ValueError: the prompt does not hold the question verbatim, or it has no token to score.
    """
    at = prompt.rfind(question)
    if at < 0:
        raise ValueError("the chat template does not hold the question verbatim")
    start, end = (len(tokenizer(prompt[:i], add_special_tokens=False)["input_ids"]) for i in (at, at + len(question)))
    if end <= max(1, start):
        raise ValueError("the question has no token to score")
    return max(1, start), end


async def agenerate(model: StepModel, question: str, steps: Sequence[str], **kwargs: Any) -> StepOutput:
    """Await ``model``'s next step: its own ``agenerate_step`` if it has one, else ``generate_step`` in a worker thread."""
    native = getattr(model, "agenerate_step", None)
    if native is not None:
        return await native(question, steps, **kwargs)  # type: ignore[no-any-return]
    return await asyncio.to_thread(model.generate_step, question, steps, **kwargs)


def continuation_prompt(tokenizer: Any, question: str, steps: Sequence[str], system_prompt: str | None = None) -> str:
    """The text a local model continues: its chat template's prompt, then the accepted steps, each with its break."""
    messages: list[Any] = [{"role": "user", "content": question}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(head) + "".join(step + STEP_SEPARATOR for step in steps)


def split_step(text: str) -> tuple[str, bool]:
    """Cut generated text at the first blank line; return (step, whether a break was found).

    Replacement characters are dropped: byte-level tokenizers decode a byte sequence that is not
    UTF-8 (a character cut at the token limit, or bytes sampled out of order) to U+FFFD, which is
    no text the model meant, and the step is both shown and fed back to the models.
    """
    head, sep, _ = text.partition(STEP_SEPARATOR)
    return head.replace("\ufffd", "").strip("\n"), bool(sep)
