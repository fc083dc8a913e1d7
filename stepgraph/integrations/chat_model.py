"""``ChatStepRouter``: the routing graph behind LangChain's chat-model interface.

Any LangChain app can swap it in for a chat model: the last human message is the question, the
reply's content is the routed chain of thought, and the routing details (which tier wrote each
step, the answer, costs per tier) are in ``response_metadata``; token counts in
``usage_metadata`` and ``llm_output["token_usage"]``. Streaming yields one chunk per step, its
details under ``response_metadata["step_<index>"]``. The graph's run is a child of the chat
model's run in callbacks and LangSmith traces. It does not call tools and has no
structured-output mode.

Settings: every ``RouterContext`` field is a field of the chat model (and a ``.bind`` /
``invoke`` keyword), plus the chat-level limits ``stop``, ``max_tokens`` and ``timeout``, which
end the answer between steps (see their field docs; the stop reason says which one did).
``max_retries`` and other unknown settings are refused with a ``ConfigError`` rather than
silently ignored.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any, cast

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_validator

from stepgraph.context import RouterContext
from stepgraph.errors import BadQuestionError, ConfigError

# The name ``stepgraph.integrations.studio.default_graph()`` compiles the embedded default with.
DEFAULT_GRAPH_NAME = "stepgraph"
# Loading the same weights from several threads at once leaves tied weights uninitialised.
_DEFAULT_GRAPH_LOCK = threading.Lock()
CONTEXT_FIELDS = tuple(f.name for f in dataclasses.fields(RouterContext))


def _context_settings() -> type[BaseModel]:
    """RouterContext's fields as pydantic fields: RouterContext stays the one source of their defaults."""
    hints = typing.get_type_hints(RouterContext)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(RouterContext):
        factory = cast(Callable[[], Any], f.default_factory)
        default = f.default if f.default is not dataclasses.MISSING else Field(default_factory=factory)
        description = f.metadata.get("description")
        fields[f.name] = (hints[f.name], default if description is None else Field(default, description=description))
    return create_model("RouterSettings", __doc__="RouterContext's fields, as chat-model settings.", **fields)


RouterSettings = _context_settings()


class ChatStepRouter(BaseChatModel, RouterSettings):  # type: ignore[misc,valid-type]
    """A chat model that answers by stepwise routing between a small and a large model.

    Besides the fields below it takes every ``RouterContext`` field (``gate``, ``max_steps``,
    ``temperature``, ``seed``, ``max_step_tokens``, ...) with RouterContext's defaults.

    Example:
        >>> from stepgraph.integrations.chat_model import ChatStepRouter
        >>> llm = ChatStepRouter(seed=0)
        >>> reply = llm.invoke("Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?")
        >>> reply.response_metadata["answer"]
        '9'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    model_name: str | None = Field(default=None, alias="model")
    """The routing graph's name (default: the graph's). It does not pick models: pass ``graph=``."""
    stop: list[str] | None = None
    """Stop sequences: the answer ends at the first step containing one, cut before it."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Budget of generated tokens of one answer, every tier's calls counted (usage_metadata's
    ``output_tokens``): the answer ends after the step that reaches it, so it can exceed it by one step."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds one answer may take: the answer ends after the step that passes it (a step is not cut)."""
    streaming: bool = False
    """``invoke`` streams internally (one graph step at a time), as LangChain's ``streaming`` flag means."""
    graph: Any = Field(default=None, exclude=True)
    """A compiled stepgraph graph; None builds the embedded default (shipped pair) on first use."""
    _graph: Any = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_retries"):
            raise ConfigError(
                "ChatStepRouter does not retry answers (max_retries): model calls are retried by their backend "
                "(ChatStepModel(max_retries=...)); to retry whole answers use ChatStepRouter(...).with_retry()."
            )
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "max_retries"}  # 0 / None: nothing to do
        return data

    @model_validator(mode="after")
    def _check(self) -> ChatStepRouter:
        self._check_model_name(self.model_name)
        self.router_context()  # RouterContext validates its own fields
        return self

    @property
    def _llm_type(self) -> str:
        return "stepgraph-router"

    @property
    def graph_name(self) -> str:
        return str(self.graph.name) if self.graph is not None else DEFAULT_GRAPH_NAME

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # The LLM cache key: every setting that changes the answer.
        params = {name: getattr(self, name) for name in CONTEXT_FIELDS}
        return {"model_name": self.graph_name, **params, "max_tokens": self.max_tokens, "timeout": self.timeout,
                "stop": self.stop}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # A per-call model= is reported as asked; the run then refuses it unless it is the graph's name.
        params = LangSmithParams(ls_provider="stepgraph", ls_model_name=kwargs.get("model", self.graph_name), ls_model_type="chat",
                                 ls_temperature=kwargs.get("temperature", self.temperature))
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def router_context(self, **overrides: Any) -> RouterContext:
        """The run's RouterContext: the fields of this chat model, with per-call overrides."""
        return RouterContext(**{name: overrides.get(name, getattr(self, name)) for name in CONTEXT_FIELDS})

    def _check_model_name(self, name: str | None) -> None:
        if name is not None and name != self.graph_name:
            raise ConfigError(
                f"model={name!r}: ChatStepRouter's model name is its graph's name ({self.graph_name!r}) and does not "
                "pick models. To route between other models, build a graph (stepgraph.build_graph(tiers, gate, "
                "name=...)) and pass it as graph=."
            )

    def _compiled(self) -> Any:
        if self.graph is not None:
            return self.graph
        with _DEFAULT_GRAPH_LOCK:  # batch() calls this from several threads; the models must load once
            if self._graph is None:
                from stepgraph.integrations.studio import default_graph  # the shipped pair; loads models once

                self._graph = default_graph()
        return self._graph

    def _start(self, messages: list[BaseMessage], stop: list[str] | None, callbacks: Any,
               kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], _Answer]:
        """The graph's input, config (callbacks nest under this run) and the answer collector."""
        unknown = set(kwargs) - {*CONTEXT_FIELDS, "max_tokens", "timeout", "model", "model_name"}
        if unknown:
            raise ConfigError(
                f"ChatStepRouter does not take {sorted(unknown)}; per-call settings are the RouterContext fields "
                f"{list(CONTEXT_FIELDS)} and max_tokens, timeout, stop."
            )
        self._check_model_name(kwargs.get("model", kwargs.get("model_name")))
        limits = {name: kwargs[name] for name in ("max_tokens", "timeout") if name in kwargs}
        if limits:  # per-call chat limits get the fields' validation
            type(self)(graph=self.graph, **limits)
        context = self.router_context(**kwargs)
        timeout = kwargs.get("timeout", self.timeout)
        answer = _Answer(
            stop=[s for s in (stop if stop is not None else self.stop) or [] if s],
            max_tokens=kwargs.get("max_tokens", self.max_tokens),
            deadline=None if timeout is None else time.monotonic() + timeout,
        )
        config = {"callbacks": callbacks, "run_name": self.graph_name}
        return {"question": _question(messages)}, {"context": context, "config": config}, answer

    def _result(self, answer: _Answer) -> ChatResult:
        result = answer.result()
        usage = _usage(result.get("totals", {}))
        message = AIMessage(content="\n\n".join(step["text"] for step in result["steps"]),
                            response_metadata=_metadata(result, self.graph_name), usage_metadata=usage)
        token_usage = {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
                       "total_tokens": usage["total_tokens"]}
        return ChatResult(generations=[ChatGeneration(message=message)],
                          llm_output={"token_usage": token_usage, "model_name": self.graph_name})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        inputs, options, answer = self._start(messages, stop, _child_callbacks(run_manager), kwargs)
        for values in self._compiled().stream(inputs, stream_mode="values", **options):
            answer.take(values)
            if answer.stopped:
                break
        return self._result(answer)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        inputs, options, answer = self._start(messages, stop, _child_callbacks(run_manager), kwargs)
        async with aclosing(self._compiled().astream(inputs, stream_mode="values", **options)) as stream:
            async for values in stream:
                answer.take(values)
                if answer.stopped:
                    break
        return self._result(answer)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        inputs, options, answer = self._start(messages, stop, _child_callbacks(run_manager), kwargs)
        for values in self._compiled().stream(inputs, stream_mode="values", **options):
            for chunk in answer.chunks(answer.take(values)):
                if run_manager:
                    run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
                yield chunk
            if answer.stopped:
                break
        yield answer.last_chunk(self.graph_name)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        inputs, options, answer = self._start(messages, stop, _child_callbacks(run_manager), kwargs)
        async with aclosing(self._compiled().astream(inputs, stream_mode="values", **options)) as stream:
            async for values in stream:
                for chunk in answer.chunks(answer.take(values)):
                    if run_manager:
                        await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
                    yield chunk
                if answer.stopped:
                    break
        yield answer.last_chunk(self.graph_name)


@dataclasses.dataclass
class _Answer:
    """Collects one answer from the graph's state snapshots and applies the chat-level limits.

    Attributes:
        stop: stop sequences; the first step containing one is cut before it and ends the answer.
        max_tokens: generated-token budget, checked after each step.
        deadline: ``time.monotonic()`` time after which no new step is started.
        state: the latest state snapshot.
        steps: the answer's steps (the last one possibly cut at a stop sequence).
        stop_reason: the chat-level limit that ended the answer (None: the graph's own stop reason).
    """

    stop: list[str]
    max_tokens: int | None
    deadline: float | None
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stop_reason: str | None = None

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def take(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Read a state snapshot; return the steps that are new in it."""
        self.state = values
        new: list[dict[str, Any]] = []
        for step in values.get("steps", [])[len(self.steps):]:
            cut = _cut_at_stop(step["text"], self.stop)
            if cut is not None:
                step = {**step, "text": cut}
                self.stop_reason = "stop_sequence"
            new.append(step)
            self.steps.append(step)
            if self.stopped:
                return new
        if new and values.get("stop_reason") is None:  # the graph would go on: do the chat limits end it?
            if self.max_tokens is not None and values.get("totals", {}).get("output_tokens", 0) >= self.max_tokens:
                self.stop_reason = "max_tokens"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self.stop_reason = "timeout"
        return new

    def result(self) -> dict[str, Any]:
        """The run's output: the graph's, with the chat-level stop reason where one ended the answer."""
        if not self.stopped:
            return {**self.state, "steps": self.steps}
        return {**self.state, "steps": self.steps, "stop_reason": self.stop_reason, "answer": None}

    def chunks(self, steps: list[dict[str, Any]]) -> list[ChatGenerationChunk]:
        chunks = []
        for step in steps:
            text = ("\n\n" if step["index"] > 0 else "") + step["text"]
            # One key per step: LangChain merges chunk metadata, and equal keys would collide.
            info = {f"step_{step['index']}": _step_info(step)}
            chunks.append(ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=info)))
        return chunks

    def last_chunk(self, model_name: str) -> ChatGenerationChunk:
        result = self.result()
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", response_metadata=_metadata(result, model_name), usage_metadata=_usage(result.get("totals", {})),
            chunk_position="last",
        ))


def _child_callbacks(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None) -> Any:
    """Callbacks that make the graph's run a child of the chat model's run (as ``ParentRunManager.get_child``).

    A chat model's run manager has no ``get_child``: it is meant to be a leaf, and this one is not.
    """
    if run_manager is None:
        return None
    async_run = isinstance(run_manager, AsyncCallbackManagerForLLMRun)
    manager = (AsyncCallbackManager if async_run else CallbackManager)(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return manager


def _question(messages: list[BaseMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text if isinstance(message.text, str) else str(message.content)
    raise BadQuestionError("ChatStepRouter needs a human message holding the question.")


def _cut_at_stop(text: str, stop: list[str]) -> str | None:
    """``text`` up to its first stop sequence, or None if it holds none."""
    positions = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(positions)] if positions else None


def _step_info(step: dict[str, Any]) -> dict[str, Any]:
    # The observation and gate score are the first draft's: for an escalated step they describe
    # the draft that was replaced, not the text kept, so "confidence" is None there.
    draft_confidence = step["observation"].get("logit_confidence")
    return {
        "index": step["index"], "tier": step["tier"], "model": step["model"], "escalated": step["escalated"],
        "confidence": None if step["escalated"] else draft_confidence, "draft_confidence": draft_confidence,
        "gate_score": step["gate_score"], "flops_so_far": step["flops_so_far"],
    }


def _metadata(result: dict[str, Any], model_name: str) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_provider": "stepgraph",
        "answer": result.get("answer"),
        "stop_reason": result.get("stop_reason"),
        "escalations": result.get("escalations", 0),
        "steps": [_step_info(s) for s in result.get("steps", [])],
        "costs": result.get("costs", {}),
        "totals": result.get("totals", {}),
    }


def _usage(totals: dict[str, float]) -> UsageMetadata:
    inputs, outputs = int(totals.get("input_tokens", 0)), int(totals.get("output_tokens", 0))
    return UsageMetadata(input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs,
                         input_token_details={"cache_read": int(totals.get("cached_tokens", 0))})
