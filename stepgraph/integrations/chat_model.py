"""``ChatStepRouter``: the routing graph behind LangChain's chat-model interface.

Any LangChain app can swap it in for a chat model: the last human message is the question, the
reply's content is the routed chain of thought, and the routing details (which tier wrote each
step, the answer, costs per tier) are in ``response_metadata``; token counts in
``usage_metadata``. Streaming yields one chunk per step, its details under
``response_metadata["step_<index>"]``. It does not call tools and has no structured-output mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from stepgraph.context import RouterContext
from stepgraph.errors import BadQuestionError


class ChatStepRouter(BaseChatModel):
    """A chat model that answers by stepwise routing between a small and a large model.

    Example:
        >>> from stepgraph.integrations.chat_model import ChatStepRouter
        >>> llm = ChatStepRouter(seed=0)
        >>> reply = llm.invoke("Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?")
        >>> reply.response_metadata["answer"]
        '9'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str = Field(default="stepgraph-testbed", alias="model")
    """Name reported to tracing; the models are the graph's tiers."""
    gate: str | None = None
    """Gate name among the graph's gates (None: the graph's default)."""
    temperature: float = 0.7
    """Sampling temperature of every model call."""
    seed: int | None = 0
    """Base seed of the run (None: random)."""
    max_steps: int = 16
    """Step limit of one answer."""
    budget_flops: float | None = None
    """FLOPs budget of one answer (None: none)."""
    sticky: bool = False
    """Keep later steps on an escalated tier."""
    graph: Any = Field(default=None, exclude=True)
    """A compiled stepgraph graph; None builds the embedded default (shipped pair) on first use."""
    _graph: Any = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "stepgraph-router"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "gate": self.gate, "temperature": self.temperature, "seed": self.seed}

    def _compiled(self) -> Any:
        if self.graph is not None:
            return self.graph
        if self._graph is None:
            from stepgraph.integrations.studio import default_graph  # the shipped pair; loads models once

            self._graph = default_graph()
        return self._graph

    def _context(self, stop: list[str] | None) -> RouterContext:
        return RouterContext(gate=self.gate, temperature=self.temperature, seed=self.seed, max_steps=self.max_steps,
                             budget_flops=self.budget_flops, sticky=self.sticky)

    @staticmethod
    def _question(messages: list[BaseMessage]) -> str:
        for message in reversed(messages):
            if isinstance(message, HumanMessage):
                return message.text if hasattr(message, "text") and isinstance(message.text, str) else str(message.content)
        raise BadQuestionError("ChatStepRouter needs a human message holding the question.")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        result = self._compiled().invoke({"question": self._question(messages)}, context=self._context(stop))
        message = AIMessage(
            content="\n\n".join(step["text"] for step in result["steps"]),
            response_metadata=_metadata(result, self.model_name),
            usage_metadata=_usage(result["totals"]),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        question = self._question(messages)
        final: dict[str, Any] = {}
        first = True
        for mode, update in self._compiled().stream({"question": question}, context=self._context(stop),
                                                   stream_mode=["updates", "values"]):
            if mode == "values":
                final = update
                continue
            for step in (update.get("append") or {}).get("steps", []):
                text = ("" if first else "\n\n") + step["text"]
                first = False
                # One key per step: LangChain merges chunk metadata, and equal keys would collide.
                info = {f"step_{step['index']}": _step_info(step)}
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=info))
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", response_metadata=_metadata(final, self.model_name), usage_metadata=_usage(final.get("totals", {})),
            chunk_position="last",
        ))


def _step_info(step: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": step["index"], "tier": step["tier"], "model": step["model"], "escalated": step["escalated"],
        "confidence": step["observation"].get("logit_confidence"), "gate_score": step["gate_score"],
        "flops_so_far": step["flops_so_far"],
    }


def _metadata(result: dict[str, Any], model_name: str) -> dict[str, Any]:
    return {
        "model_name": model_name,
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
