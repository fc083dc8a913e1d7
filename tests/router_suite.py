"""langchain-tests' standard unit suite set up for ChatStepRouter, for test modules to subclass.

Its name does not start with ``Test``, so pytest runs it only where a test class subclasses it.
"""

from langchain_tests.unit_tests import ChatModelUnitTests

from stepgraph.integrations.chat_model import ChatStepRouter


class RouterUnitSuite(ChatModelUnitTests):
    """The standard unit suite; tool calling and structured output are not offered."""

    @property
    def chat_model_class(self) -> type[ChatStepRouter]:
        return ChatStepRouter

    @property
    def chat_model_params(self) -> dict:
        return {"model": "stepgraph", "temperature": 0.7, "seed": 0}

    @property
    def standard_chat_model_params(self) -> dict:
        # No API key (the models run in process); max_retries is refused with a ConfigError (answers
        # are not retried; backends retry their calls).
        return {k: v for k, v in super().standard_chat_model_params.items() if k not in ("api_key", "max_retries")}

    @property
    def supports_model_override(self) -> bool:
        return False  # the model name is the graph's; models are picked by passing another graph

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False
