"""OpenAI chat-completions protocol: the pydantic request and response models, what of a request this
server honours, the error object, and the ``stepgraph`` routing extension."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

MAX_TEMPERATURE = 2.0  # OpenAI's range for `temperature`


class APIError(Exception):
    """An error answered in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = True


class ChatCompletionRequest(BaseModel):
    """The request fields the server reads; fields that would change the output and are not
    supported are rejected by name in ``unsupported_fields``; other unknown fields are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE)
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


# field -> (value that changes nothing, why it is refused)
_NEUTRAL: dict[str, tuple[Any, str]] = {
    "n": (1, "this server returns one choice per request; set n to 1 or leave it out"),
    "top_p": (1.0, "the routed models sample with temperature only; leave top_p out or set it to 1"),
    "presence_penalty": (0.0, "penalties are not supported; leave it out or set it to 0"),
    "frequency_penalty": (0.0, "penalties are not supported; leave it out or set it to 0"),
    "logprobs": (False, "log-probabilities are not returned; leave it out or set it to false"),
    "top_logprobs": (0, "log-probabilities are not returned; leave it out"),
}
_REFUSED_IF_SET = {
    "tools": "the router does not call tools",
    "tool_choice": "the router does not call tools",
    "functions": "the router does not call functions",
    "function_call": "the router does not call functions",
    "logit_bias": "logit_bias is not supported",
    "stop": "stop sequences are not supported (each step ends at a step break)",
}


def unsupported_field(req: ChatCompletionRequest) -> APIError | None:
    """The first field whose value would change the output in a way this server cannot honour."""
    for name, (neutral, why) in _NEUTRAL.items():
        value = getattr(req, name)
        if value is not None and value != neutral:
            return APIError(400, f"Unsupported value of '{name}': {why}.", param=name, code="unsupported_parameter")
    for name, why in _REFUSED_IF_SET.items():
        value = getattr(req, name)
        if value not in (None, [], "none"):
            return APIError(400, f"Unsupported parameter '{name}': {why}.", param=name, code="unsupported_parameter")
    if req.response_format is not None and req.response_format.get("type", "text") != "text":
        return APIError(400, "Unsupported 'response_format': the answer is free text (type 'text' only).",
                        param="response_format", code="unsupported_parameter")
    return None


def question_of(messages: list[ChatMessage]) -> str:
    """The last user message's text (the graph answers one question; earlier turns are not read)."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        parts = []
        for j, part in enumerate(message.content or []):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content[{j}] has type {part.get('type')!r}; only text parts "
                               "are supported.", param=f"messages[{i}].content[{j}].type")
            parts.append(part["text"])
        return "\n".join(parts)
    raise APIError(400, "No user message: put the question in a message with role 'user'.", param="messages")


def _step_info(step: dict[str, Any]) -> dict[str, Any]:
    observation = step.get("observation") or {}
    return {"index": step["index"], "tier": step["tier"], "model": step["model"], "escalated": step["escalated"],
            "confidence": observation.get("logit_confidence", step.get("confidence")),
            "gate_score": step.get("gate_score")}


def routing_details(result: dict[str, Any], *, stop_reason: str | None = None) -> dict[str, Any]:
    """The ``stepgraph`` extension field: how the answer was routed and what each tier cost."""
    return {
        "answer": result.get("answer"),
        "stop_reason": stop_reason or result.get("stop_reason"),
        "escalations": result.get("escalations", 0),
        "in_domain": result.get("in_domain"),
        "steps": [_step_info(s) for s in result.get("steps", [])],
        "costs": result.get("costs", {}),
        "totals": result.get("totals", {}),
    }


def usage_of(totals: dict[str, float]) -> dict[str, Any]:
    prompt, completion = int(totals.get("input_tokens", 0)), int(totals.get("output_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(totals.get("cached_tokens", 0))}}


def finish_reason_of(stop_reason: str | None) -> Literal["stop", "length"]:
    return "stop" if stop_reason == "final_answer" else "length"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Delta(BaseModel):
    """A chunk's delta; fields left None are not sent (the role rides on the first chunk only)."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class _Completion(BaseModel):
    """The fields a completion and its chunks share, in OpenAI's order; ``object`` is fixed by each."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | None = None


class ChatCompletionResponse(_Completion):
    """``chat.completion``: one choice, usage, and ``stepgraph``, the routing details extension."""

    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage
    stepgraph: dict[str, Any]


class ChatCompletionChunk(_Completion):
    """``chat.completion.chunk``: one per decided step (``stepgraph.step``), then a final one with the
    finish reason, all routing details and (when asked) usage."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    stepgraph: dict[str, Any]
    usage: Usage | None = None

    def wire(self) -> dict[str, Any]:
        """The chunk as sent: no usage key unless it has usage, no delta keys left None."""
        body = self.model_dump(exclude={"usage"} if self.usage is None else set())
        for choice, model in zip(body["choices"], self.choices, strict=True):
            choice["delta"] = model.delta.model_dump(exclude_none=True)
        return body


def completion(base: dict[str, Any], content: str, result: dict[str, Any], stop_reason: str | None,
               thread: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``chat.completion`` response body (``thread``: the conversation's ``thread_id`` and ``answers``, if any)."""
    return ChatCompletionResponse(
        **base, choices=[Choice(message=AssistantMessage(content=content),
                                finish_reason=finish_reason_of(stop_reason or result.get("stop_reason")))],
        usage=Usage(**usage_of(result.get("totals", {}))),
        stepgraph={**routing_details(result, stop_reason=stop_reason), **(thread or {})},
    ).model_dump()


def step_chunk(base: dict[str, Any], step: dict[str, Any], first: bool) -> dict[str, Any]:
    """The chunk of one decided step (the first one carries the role)."""
    delta = Delta(role="assistant" if first else None, content=("" if first else "\n\n") + step["text"])
    return ChatCompletionChunk(**base, choices=[ChunkChoice(delta=delta)], stepgraph={"step": _step_info(step)}).wire()


def final_chunk(base: dict[str, Any], result: dict[str, Any], stop_reason: str | None, *, first: bool,
                include_usage: bool, thread: dict[str, Any] | None = None) -> dict[str, Any]:
    """The last chunk: the finish reason, the routing details and (if asked) the usage."""
    choice = ChunkChoice(delta=Delta(role="assistant" if first else None),
                         finish_reason=finish_reason_of(stop_reason or result.get("stop_reason")))
    usage = Usage(**usage_of(result.get("totals", {}))) if include_usage else None
    return ChatCompletionChunk(**base, choices=[choice], usage=usage,
                               stepgraph={**routing_details(result, stop_reason=stop_reason), **(thread or {})}).wire()
