"""The project's exception types; each message says what to do about it.

Each error is also the built-in exception it is (a bad question is a ``ValueError``, a model
failure a ``RuntimeError``), so servers and agents that only show messages of built-in types
(the LangGraph server, LangChain's ToolNode) pass the message on to the user.
"""


class StepgraphError(Exception):
    """Base class of every error stepgraph raises on purpose."""


class ConfigError(StepgraphError, ValueError):
    """A setting or option is out of its allowed range or of the wrong type."""


class GateConfigError(ConfigError):
    """A gate was configured with invalid options or a bad fitted-gate file."""


class BadQuestionError(StepgraphError, ValueError):
    """The question is empty, not text, or too long for the models."""


class ModelLoadError(StepgraphError, RuntimeError):
    """A model directory or endpoint could not be loaded."""


class ModelOutputError(StepgraphError, RuntimeError):
    """A model returned output the graph cannot use (no logprobs, empty response, ...)."""


class ContextLimitError(ModelOutputError, ValueError):
    """The prompt (question and accepted steps) no longer fits the model's context window.

    The graph stops such a run with ``stop_reason="context_limit"`` and returns the steps so far;
    on the first step it is the question that is too long (``BadQuestionError``).
    """


class DataError(StepgraphError, ValueError):
    """A data file cannot be read, or a row of it has no usable question or answer; the message names the file and line."""


class PolicyFileError(StepgraphError, ValueError):
    """A policy artifact is missing, corrupted, or was trained on another feature schema."""


class TraceStoreError(StepgraphError, RuntimeError):
    """A trace store is corrupted, truncated or of another schema version."""


class UnsupportedFeatureError(StepgraphError, NotImplementedError):
    """An interface feature stepgraph does not offer (e.g. tool calling on the chat model); the message says what to use."""
