"""Any LangChain chat model as a tier: OpenAI through ``ChatOpenAI``, a vLLM server, or your own.

The model must return token log-probabilities in ``AIMessage.response_metadata["logprobs"]
["content"]`` (``ChatOpenAI(logprobs=True, top_logprobs=5)`` does, against OpenAI and vLLM).

Two ways to ask for the next step:
- ``continue_final_message=True`` (vLLM): the accepted steps are a partial assistant message
  the server continues (``extra_body={"continue_final_message": True,
  "add_generation_prompt": False}``), so the prompt is the same as a local model's.
- otherwise (OpenAI, which cannot continue a message): the previous steps go into the user
  turn with ``CONTINUE_PROMPT`` asking for the next step only.

Serving faults: transient errors (timeouts, connection errors, HTTP 5xx) are retried
``max_retries`` times with exponential backoff, then raise ``ModelOutputError``. A response
without log-probabilities raises ``ModelOutputError`` when ``require_logprobs`` is set; by default
the step is kept with empty statistics, its confidence features are None, and the confidence
gates treat unknown confidence as low (they escalate).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from stepgraph.errors import ContextLimitError, ModelOutputError
from stepgraph.models.base import DEFAULT_TEMPERATURE, STEP_SEPARATOR, QuestionScore, StepOutput, split_step

CONTINUE_PROMPT = (
    "{question}\n\nSolve it step by step, one step per paragraph. The steps so far are:\n\n{steps}\n\n"
    "Write only the next step (one paragraph), or the final answer as \\boxed{{...}} if the steps are complete."
)
# How OpenAI ("context_length_exceeded") and vLLM's server word a prompt that does not fit.
CONTEXT_LIMIT_MARKERS = ("context_length_exceeded", "maximum context length", "maximum model length")
TRANSIENT_NAMES = ("Timeout", "Connection", "InternalServer", "ServiceUnavailable", "RateLimit", "APIError")


def is_context_limit(exc: BaseException) -> bool:
    """The server refused the request because the prompt exceeds the model's context window."""
    text = f"{getattr(exc, 'code', '')} {exc}".lower()
    return any(marker in text for marker in CONTEXT_LIMIT_MARKERS)


def is_transient(exc: BaseException) -> bool:
    """Timeouts, connection failures and HTTP 5xx: worth another try."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    return isinstance(exc, (TimeoutError, ConnectionError)) or any(n in type(exc).__name__ for n in TRANSIENT_NAMES)


class ChatStepModel:
    """A LangChain chat model behind the StepModel interface.

    Args:
        chat_model: e.g. ``ChatOpenAI(model="gpt-4.1-mini", logprobs=True, top_logprobs=5)``, or
            the same class with ``base_url`` pointing at a vLLM server.
        n_params: the model's parameter count, for FLOPs (an estimate for API models).
        name: name in traces and costs (default: the chat model's ``model_name``).
        continue_final_message: the server continues a partial assistant message (vLLM).
        system_prompt: an optional system turn.
        logprobs_are_logits: the server reports raw logits in place of log-probabilities
            (vLLM with ``--logprobs-mode raw_logits``); the top value is then the max logit.
        require_logprobs: raise instead of falling back when a response has no log-probabilities.
        max_retries: extra attempts on transient errors.
        backoff_seconds: first retry delay, doubled each time.
    """

    def __init__(self, chat_model: BaseChatModel, *, n_params: int, name: str | None = None,
                 continue_final_message: bool = False, system_prompt: str | None = None,
                 logprobs_are_logits: bool = False, require_logprobs: bool = False, max_retries: int = 3,
                 backoff_seconds: float = 0.5) -> None:
        self.chat_model = chat_model
        self.n_params = n_params
        self.name = name or str(getattr(chat_model, "model_name", None) or type(chat_model).__name__)
        self.continue_final_message = continue_final_message
        self.system_prompt = system_prompt
        self.logprobs_are_logits = logprobs_are_logits
        self.require_logprobs = require_logprobs
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self._no_prompt_logprobs = False  # the server answered question_logprob without them once: not asked again

    def messages(self, question: str, steps: Sequence[str]) -> list[BaseMessage]:
        head: list[BaseMessage] = [SystemMessage(self.system_prompt)] if self.system_prompt else []
        if self.continue_final_message:
            partial = "".join(step + STEP_SEPARATOR for step in steps)
            return [*head, HumanMessage(question), AIMessage(partial)]
        if not steps:
            return [*head, HumanMessage(question)]
        return [*head, HumanMessage(CONTINUE_PROMPT.format(question=question, steps=STEP_SEPARATOR.join(steps)))]

    def _checked(self, reply: BaseMessage) -> AIMessage:
        if not isinstance(reply, AIMessage):
            raise ModelOutputError(f"{self.name} returned {type(reply).__name__}, not an AIMessage.")
        return reply

    def _gives_up(self, exc: Exception, attempt: int) -> ModelOutputError | None:
        """The error to raise, or None to try again (a transient error with retries left)."""
        if is_context_limit(exc):
            return ContextLimitError(f"{self.name} cannot take the prompt: {exc}")
        if is_transient(exc) and attempt < self.max_retries:
            return None
        return ModelOutputError(f"{self.name} failed after {attempt + 1} attempt(s): {type(exc).__name__}: {exc}")

    def _invoke(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        for attempt in range(self.max_retries + 1):
            try:
                return self._checked(self.chat_model.invoke(messages, **kwargs))
            except ModelOutputError:
                raise
            except Exception as exc:  # only transient errors are retried
                if (error := self._gives_up(exc, attempt)) is not None:
                    raise error from exc
                time.sleep(self.backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")

    async def _ainvoke(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        for attempt in range(self.max_retries + 1):
            try:
                return self._checked(await self.chat_model.ainvoke(messages, **kwargs))
            except ModelOutputError:
                raise
            except Exception as exc:  # only transient errors are retried
                if (error := self._gives_up(exc, attempt)) is not None:
                    raise error from exc
                await asyncio.sleep(self.backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")

    def _call_kwargs(self, temperature: float, seed: int | None, max_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"stop": [STEP_SEPARATOR], "temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            kwargs["seed"] = seed
        if self.continue_final_message:
            kwargs["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        return kwargs

    def generate_step(self, question: str, steps: Sequence[str], *, temperature: float = DEFAULT_TEMPERATURE, seed: int | None = None,
                      max_tokens: int = 64) -> StepOutput:
        return self._step(self._invoke(self.messages(question, steps), **self._call_kwargs(temperature, seed, max_tokens)))

    async def agenerate_step(self, question: str, steps: Sequence[str], *, temperature: float = DEFAULT_TEMPERATURE, seed: int | None = None,
                             max_tokens: int = 64) -> StepOutput:
        """``generate_step`` through the chat model's ``ainvoke``: no thread is held while the server answers."""
        reply = await self._ainvoke(self.messages(question, steps), **self._call_kwargs(temperature, seed, max_tokens))
        return self._step(reply)

    def question_logprob(self, question: str) -> QuestionScore | None:
        """The mean log-likelihood of the question's tokens, from vLLM's ``prompt_logprobs`` extension.

        Asked of the OpenAI client under a ``ChatOpenAI`` (its ``root_client``): one chat completion of
        one token with ``extra_body={"prompt_logprobs": 0}``, the prompt's tokens read from the
        response's ``prompt_logprobs`` rows. None (the out-of-domain signal is off) for another chat
        model, for a server in raw-logit mode, and once a server answers without the field or refuses
        it (OpenAI's API), which is not asked again.
        """
        client = getattr(self.chat_model, "root_client", None)
        if client is None or self.logprobs_are_logits or self._no_prompt_logprobs:
            return None
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        try:
            response = client.chat.completions.create(
                model=getattr(self.chat_model, "model_name", None) or self.name, messages=[*head, {"role": "user", "content": question}],
                max_tokens=1, temperature=0.0, extra_body={"prompt_logprobs": 0})
        except Exception as exc:
            if not is_transient(exc):
                self._no_prompt_logprobs = True
            raise ModelOutputError(f"{self.name} could not score the question (prompt_logprobs): {type(exc).__name__}: {exc}") from exc
        rows = (getattr(response, "model_extra", None) or {}).get("prompt_logprobs")
        if not rows:
            self._no_prompt_logprobs = True
            return None
        usage = getattr(response, "usage", None)
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0
        return _question_mean(rows, question, getattr(usage, "prompt_tokens", len(rows)), int(cached),
                              getattr(usage, "completion_tokens", 1))

    def _step(self, reply: AIMessage) -> StepOutput:
        text, _ = split_step(reply.text if isinstance(reply.text, str) else str(reply.content))
        content = (reply.response_metadata.get("logprobs") or {}).get("content") or []
        if not content and self.require_logprobs:
            raise ModelOutputError(
                f"{self.name} returned no log-probabilities; enable them (ChatOpenAI(logprobs=True, top_logprobs=5)) "
                "or pass require_logprobs=False to route without confidence features."
            )
        tokens = [str(c.get("token", "")) for c in content]
        tops = [[(str(t.get("token", "")), float(t["logprob"])) for t in (c.get("top_logprobs") or [])] or
                [(str(c.get("token", "")), float(c["logprob"]))] for c in content]
        max_logits = [max(v for _, v in top) for top in tops] if self.logprobs_are_logits and tops else None
        usage: dict[str, Any] = dict(reply.usage_metadata or {})
        cached = int((usage.get("input_token_details") or {}).get("cache_read", 0) or 0)
        return StepOutput(
            text=text,
            tokens=tokens,
            max_logits=max_logits,
            top_logprobs=[] if self.logprobs_are_logits else tops,  # raw logits are not probabilities
            token_logprobs=None if self.logprobs_are_logits or not content else [float(c["logprob"]) for c in content],
            prompt_tokens=int(usage.get("input_tokens", 0)),
            cached_tokens=cached,
            generated_tokens=int(usage.get("output_tokens", len(tokens))),
            finished=self._ended_answer(reply.response_metadata, tokens),
            model=self.name,
        )

    def _ended_answer(self, meta: dict[str, Any], tokens: list[str]) -> bool:
        """Whether the model ended the whole answer (end of sequence), not only the step.

        In prompt mode (OpenAI) every reply ends naturally, so this is False there and the answer
        ends at its ``\\boxed{}``.
        """
        if meta.get("finish_reason") != "stop":
            return False
        if "stop_reason" in meta:  # vLLM's field: the matched stop string, None at end of sequence
            return meta["stop_reason"] is None
        # vLLM through langchain-openai, which drops stop_reason: a matched step break is among the tokens
        return self.continue_final_message and bool(tokens) and STEP_SEPARATOR not in "".join(tokens)


def _question_mean(rows: Sequence[dict[str, Any] | None], question: str, prompt_tokens: int, cached: int, generated: int) -> QuestionScore:
    """The mean log-probability of the prompt tokens whose text overlaps ``question``, from vLLM's
    ``prompt_logprobs`` rows (one ``{token_id: {"logprob", "decoded_token", ...}}`` per prompt token, the first None)."""
    pieces: list[tuple[str, float | None]] = []
    for row in rows:
        entry = next(iter(row.values())) if row else None  # prompt_logprobs=0: the prompt token alone
        pieces.append(("", None) if entry is None else (str(entry.get("decoded_token") or ""), float(entry["logprob"])))
    text = "".join(piece for piece, _ in pieces)
    at = text.rfind(question)
    if at < 0:
        raise ModelOutputError("the server's prompt_logprobs tokens do not spell the question")
    values, offset = [], 0
    for piece, logprob in pieces:
        if logprob is not None and offset < at + len(question) and offset + len(piece) > at:
            values.append(logprob)
        offset += len(piece)
    if not values:
        raise ModelOutputError("the server's prompt_logprobs hold no value for the question's tokens")
    return QuestionScore(sum(values) / len(values), len(values), int(prompt_tokens), cached, int(generated))
