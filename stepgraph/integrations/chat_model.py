"""``ChatStepRouter``: the routing graph behind LangChain's chat-model interface.

Any LangChain app can swap it in for a chat model: the last human message is the question, the
reply's content is the routed chain of thought, and the routing details (which tier wrote each
step, the answer, costs per tier) are in ``response_metadata``; token counts in
``usage_metadata`` and ``llm_output["token_usage"]``. Streaming yields one chunk per step, its
details under ``response_metadata["step_<index>"]``. The graph's run is a child of the chat
model's run in callbacks and LangSmith traces, on every path (invoke, stream, their async forms,
astream_events). It does not call tools and has no structured-output mode: ``bind_tools`` and
``with_structured_output`` raise ``UnsupportedFeatureError`` saying to give an agent whose model
calls tools ``routed_reasoning_tool()`` instead.

The LLM cache key holds every setting of the call and a fingerprint of the graph (its tiers,
gates and their artifacts: ``stepgraph.integrations.fingerprint``), never the graph's name alone.
``get_num_tokens`` counts with the draft tier's tokenizer, offline.

Settings: every ``RouterContext`` field is a field of the chat model (and a ``.bind`` /
``invoke`` keyword), plus the chat-level limits ``stop``, ``max_tokens`` and ``timeout``, which
end the answer between steps (see their field docs; the stop reason says which one did).
``max_retries`` and other unknown settings are refused with a ``ConfigError`` rather than
silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import aclosing
from typing import Any, NoReturn, cast

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.runnables.config import var_child_runnable_config
from pydantic import ConfigDict, Field, PrivateAttr, create_model, model_validator

from stepgraph.context import RouterContext
from stepgraph.errors import BadQuestionError, ConfigError, UnsupportedFeatureError
from stepgraph.integrations.fingerprint import graph_fingerprint, tiers_of
from stepgraph.integrations.settings import CONTEXT_FIELDS, context_fields

# The name ``stepgraph.integrations.studio.default_graph()`` compiles the embedded default with.
DEFAULT_GRAPH_NAME = "stepgraph"
# Loading the same weights from several threads at once leaves tied weights uninitialised.
_DEFAULT_GRAPH_LOCK = threading.Lock()
# Former names of the model (releases before the model name became the graph's name: a label that
# picked nothing). They are accepted as the graph's name with a DeprecationWarning.
FORMER_MODEL_NAMES = ("stepgraph-testbed",)
# How stream()/astream() hand _stream/_astream the callbacks of the chat run (see _parent_run).
_GRAPH_CALLBACKS = "_stepgraph_graph_callbacks"
# What to use instead of tools and structured output: the routed graph as a tool of a tool-calling model.
_USE_THE_TOOL = (
    "put stepgraph.integrations.tool.routed_reasoning_tool() in an agent whose model calls tools (e.g. "
    "langchain.agents.create_agent(ChatOpenAI(...), [routed_reasoning_tool()]), as examples/agent_tool.py does); that model can also give "
    "structured output. ChatStepRouter's own reply is the routed chain of thought, with the answer in "
    "response_metadata['answer']."
)

# RouterContext's fields as pydantic fields: RouterContext stays the one source of their defaults.
RouterSettings = create_model("RouterSettings", __doc__="RouterContext's fields, as chat-model settings.",
                              **context_fields())  # type: ignore[call-overload]


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
    """A compiled stepgraph graph; None builds the embedded default (the shipped tiers) on first use."""
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
        self.model_name = self._resolve_model_name(self.model_name, stacklevel=5)  # warn at the caller's line
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
        # Every setting that changes the answer (the cache key adds the graph's fingerprint: _get_llm_string).
        params = {name: getattr(self, name) for name in CONTEXT_FIELDS}
        return {"model_name": self.graph_name, **params, "max_tokens": self.max_tokens, "timeout": self.timeout,
                "stop": self.stop}

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop(_GRAPH_CALLBACKS, None)
        params = super()._get_invocation_params(stop=stop, **kwargs)
        # BaseChatModel writes the per-call stop (None when not given) over the field's; the answer
        # ends at the per-call stop if given, else at the field's, so that is the stop of this call.
        params["stop"] = stop if stop is not None else self.stop
        return params

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        """The LLM cache key: every setting of this call and the fingerprint of the graph that answers.

        Two routers share an entry only if their settings (per-call ones winning) and their graphs'
        tiers, gates (with their artifacts), prices and limits are the same; a graph's name alone
        says nothing (a custom graph is named "stepgraph" by default).
        """
        kwargs.pop(_GRAPH_CALLBACKS, None)
        params = {**self._get_invocation_params(stop=stop, **kwargs), "graph": graph_fingerprint(self._compiled())}
        return json.dumps(params, sort_keys=True, default=str)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # A per-call model= is reported as asked (a former name as the graph's); the run then refuses
        # it unless it is the graph's name.
        model = kwargs.get("model", self.graph_name)
        params = LangSmithParams(ls_provider="stepgraph", ls_model_name=self.graph_name if model in FORMER_MODEL_NAMES else model,
                                 ls_model_type="chat", ls_temperature=kwargs.get("temperature", self.temperature))
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def router_context(self, **overrides: Any) -> RouterContext:
        """The run's RouterContext: the fields of this chat model, with per-call overrides."""
        return RouterContext(**{name: overrides.get(name, getattr(self, name)) for name in CONTEXT_FIELDS})

    def _resolve_model_name(self, name: str | None, stacklevel: int = 3) -> str | None:
        """``name`` if it is the graph's name; a former name becomes it with a DeprecationWarning.

        Raises:
            ConfigError: any other name (it would pick no model).
        """
        if name in FORMER_MODEL_NAMES:
            warnings.warn(
                f"ChatStepRouter(model={name!r}) is a former name, now the graph's name {self.graph_name!r}: pass "
                f"model={self.graph_name!r} or leave model unset ({name!r} will be refused in a later release).",
                DeprecationWarning, stacklevel=stacklevel,
            )
            return self.graph_name
        if name is not None and name != self.graph_name:
            raise ConfigError(
                f"model={name!r}: ChatStepRouter's model name is its graph's name ({self.graph_name!r}) and does not "
                "pick models. To route between other models, build a graph (stepgraph.build_graph(tiers, gate, "
                "name=...)) and pass it as graph=."
            )
        return name

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the draft tier's tokenizer (tier 0: it reads every prompt first).

        Falls back to the next tier with a tokenizer; with none (e.g. API tiers), ``get_num_tokens``
        estimates instead. Never downloads anything (LangChain's default is GPT-2's tokenizer from
        the Hugging Face hub). A ``custom_get_token_ids`` wins.
        """
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        tokenizer = _tier_tokenizer(self._compiled())
        if tokenizer is None:
            raise UnsupportedFeatureError(
                "None of this graph's tiers has a local tokenizer (API tiers count their own tokens); "
                "get_num_tokens estimates one token per 4 characters, or pass custom_get_token_ids=."
            )
        return list(tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the draft tier's tokenizer (see ``get_token_ids``), offline.

        With no tier tokenizer: an estimate of one token per 4 characters (rounded up), the rule of
        thumb for English text with BPE tokenizers.
        """
        if self.custom_get_token_ids is None and _tier_tokenizer(self._compiled()) is None:
            return -(-len(text) // 4)
        return len(self.get_token_ids(text))

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any) -> NoReturn:
        """Refused: the routed models write reasoning steps, not tool calls (the message says what to do)."""
        raise UnsupportedFeatureError(f"ChatStepRouter does not call tools (bind_tools); instead {_USE_THE_TOOL}")

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> NoReturn:
        """Refused: the routed models write reasoning steps, not JSON (the message says what to do)."""
        raise UnsupportedFeatureError(f"ChatStepRouter has no structured-output mode (with_structured_output); instead {_USE_THE_TOOL}")

    def _compiled(self) -> Any:
        if self.graph is not None:
            return self.graph
        with _DEFAULT_GRAPH_LOCK:  # batch() calls this from several threads; the models must load once
            if self._graph is None:
                from stepgraph.integrations.studio import default_graph  # the shipped tiers; loads models once

                self._graph = default_graph()
        return self._graph

    def _start(self, messages: list[BaseMessage], stop: list[str] | None, callbacks: Any,
               kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], _Answer]:
        """The graph's input, config (callbacks nest under this run) and the answer collector."""
        # LangChain's own keys: ``stream`` (whether to stream; the graph always goes step by step)
        # and the chat run's callbacks handed over by stream()/astream().
        kwargs = {k: v for k, v in kwargs.items() if k not in ("stream", _GRAPH_CALLBACKS)}
        unknown = set(kwargs) - {*CONTEXT_FIELDS, "max_tokens", "timeout", "model", "model_name"}
        if unknown:
            raise ConfigError(
                f"ChatStepRouter does not take {sorted(unknown)}; per-call settings are the RouterContext fields "
                f"{list(CONTEXT_FIELDS)} and max_tokens, timeout, stop."
            )
        self._resolve_model_name(kwargs.get("model", kwargs.get("model_name")))
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

    # How the graph's run stays a child of the chat run on every path. BaseChatModel calls
    # _stream/_astream without the run manager (on purpose: it reports the tokens itself), from
    # stream()/astream() and from invoke() when it streams. So invoke() always goes through
    # _generate/_agenerate, which have the run manager and report the steps as tokens when LangChain
    # would have streamed; stream()/astream() fix the chat run's id and hand its callbacks over.

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        # Asked with a run manager only by invoke()'s path: keep it on _generate (see above).
        return run_manager is None and super()._should_stream(async_api=async_api, **kwargs)

    def _reports_tokens(self, async_api: bool, run_manager: Any, kwargs: dict[str, Any]) -> bool:
        """Whether LangChain would have streamed this invoke (``streaming=True``, a streaming handler)."""
        return run_manager is not None and super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        config, callbacks = _parent_run(config, CallbackManager)
        yield from super().stream(input, config, stop=stop, **kwargs, **{_GRAPH_CALLBACKS: callbacks})

    async def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        config, callbacks = _parent_run(config, AsyncCallbackManager)
        chunks = cast(AsyncGenerator[AIMessageChunk, None], super().astream(input, config, stop=stop, **kwargs, **{_GRAPH_CALLBACKS: callbacks}))
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        tokens = self._reports_tokens(False, run_manager, kwargs)
        inputs, options, answer = self._start(messages, stop, _child_callbacks(run_manager), kwargs)
        for values in _steps(self._compiled(), inputs, options):
            for chunk in answer.chunks(answer.take(values)):
                if tokens and run_manager:
                    run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            if answer.stopped:
                break
        return self._result(answer)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        tokens = self._reports_tokens(True, run_manager, kwargs)
        inputs, options, answer = self._start(messages, stop, _child_callbacks(run_manager), kwargs)
        async with aclosing(_asteps(self._compiled(), inputs, options)) as stream:
            async for values in stream:
                for chunk in answer.chunks(answer.take(values)):
                    if tokens and run_manager:
                        await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
                if answer.stopped:
                    break
        return self._result(answer)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        callbacks = kwargs.pop(_GRAPH_CALLBACKS, None)
        if callbacks is None:
            callbacks = _child_callbacks(run_manager)
        inputs, options, answer = self._start(messages, stop, callbacks, kwargs)
        for values in _steps(self._compiled(), inputs, options):
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
        callbacks = kwargs.pop(_GRAPH_CALLBACKS, None)
        if callbacks is None:
            callbacks = _child_callbacks(run_manager)
        inputs, options, answer = self._start(messages, stop, callbacks, kwargs)
        async with aclosing(_asteps(self._compiled(), inputs, options)) as stream:
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


def _steps(graph: Any, inputs: dict[str, Any], options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The graph's state after each step, its run a child of the chat run also inside a chain.

    LangGraph merges the config an enclosing chain leaves in the context with the config passed,
    and the chain's parent run wins: the graph would be the chat run's sibling. It reads that
    context only as it starts, so it starts with the context cleared: its config is the one given.
    """
    stream = graph.stream(inputs, stream_mode="values", **options)
    try:
        token = var_child_runnable_config.set(None)
        try:
            first = next(stream, None)
        finally:
            var_child_runnable_config.reset(token)
        if first is not None:
            yield first
            yield from stream
    finally:
        stream.close()


async def _asteps(graph: Any, inputs: dict[str, Any], options: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
    """``_steps`` for the graph's async stream."""
    stream = graph.astream(inputs, stream_mode="values", **options)
    try:
        token = var_child_runnable_config.set(None)
        try:
            first = await anext(stream, None)
        finally:
            var_child_runnable_config.reset(token)
        if first is not None:
            yield first
            async for values in stream:
                yield values
    finally:
        await stream.aclose()


def _child_callbacks(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None) -> Any:
    """Callbacks that make the graph's run a child of the chat model's run (as ``ParentRunManager.get_child``).

    A chat model's run manager has no ``get_child``: it is meant to be a leaf, and this one is not.
    """
    if run_manager is None:
        return None
    async_run = isinstance(run_manager, AsyncCallbackManagerForLLMRun)
    return _children(AsyncCallbackManager if async_run else CallbackManager, run_manager.run_id, run_manager)


def _children(manager_class: type[CallbackManager | AsyncCallbackManager], parent_run_id: uuid.UUID,
              parent: Any) -> Any:
    """Callbacks for runs under ``parent_run_id``: ``parent``'s inheritable handlers, tags and metadata."""
    manager = manager_class(handlers=[], parent_run_id=parent_run_id)
    manager.set_handlers(parent.inheritable_handlers)
    manager.add_tags(parent.inheritable_tags)
    manager.add_metadata(parent.inheritable_metadata)
    return manager


def _parent_run(config: RunnableConfig | None, manager_class: type[CallbackManager | AsyncCallbackManager],
                ) -> tuple[RunnableConfig, Any]:
    """``config`` for stream()/astream() with the chat run's id fixed, and the callbacks of its children.

    The callbacks are configured here once (handlers, tags, metadata, and LangSmith's tracer when
    tracing is on) and passed on as the chat run's callbacks, so its run and the graph's share the
    same handler objects: a tracer finds the graph's parent among the runs it has seen.
    """
    config = ensure_config(config)
    run_id = config.get("run_id") or uuid.uuid4()
    manager = manager_class.configure(config.get("callbacks"), inheritable_tags=config.get("tags"),
                                      inheritable_metadata=config.get("metadata"))
    return RunnableConfig(**{**config, "callbacks": manager, "run_id": run_id}), _children(manager_class, run_id, manager)


def _tier_tokenizer(graph: Any) -> Any:
    """The first tier's tokenizer (an ``encode(text, add_special_tokens=...)``), None if no tier has one.

    A tier that loads on first use (the embedded default's) is loaded: the tokenizer comes with the
    model, from local files. An API tier has none.
    """
    for tier in tiers_of(graph):
        model = tier if hasattr(tier, "tokenizer") else getattr(tier, "model", None)  # a lazily loaded tier
        tokenizer = getattr(model, "tokenizer", None)
        if callable(getattr(tokenizer, "encode", None)):
            return tokenizer
    return None


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
        "in_domain": result.get("in_domain"),
        "steps": [_step_info(s) for s in result.get("steps", [])],
        "costs": result.get("costs", {}),
        "totals": result.get("totals", {}),
    }


def _usage(totals: dict[str, float]) -> UsageMetadata:
    inputs, outputs = int(totals.get("input_tokens", 0)), int(totals.get("output_tokens", 0))
    return UsageMetadata(input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs,
                         input_token_details={"cache_read": int(totals.get("cached_tokens", 0))})
