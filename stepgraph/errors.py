"""The project's exception types; each message says what to do about it."""


class StepgraphError(Exception):
    """Base class of every error stepgraph raises on purpose."""


class ModelLoadError(StepgraphError):
    """A model directory or endpoint could not be loaded."""


class BadQuestionError(StepgraphError, ValueError):
    """The question is empty, not text, or too long for the models."""


class ModelOutputError(StepgraphError):
    """A model returned output the graph cannot use (no logprobs, empty response, ...)."""


class PolicyFileError(StepgraphError):
    """A policy artifact is missing, corrupted, or was trained on another feature schema."""


class TraceStoreError(StepgraphError):
    """A trace store is corrupted, truncated or of another schema version."""


class GateConfigError(StepgraphError, ValueError):
    """A gate was configured with invalid options or a bad fitted-gate file."""
