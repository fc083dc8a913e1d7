"""langchain-tests' standard integration suite for ChatStepRouter, on the shipped tiers (offline, in process).

Most of its questions ("Hello", "hi") are off the shipped tiers' domain: they ramble until
a stop rule ends the answer (the standard ``max_tokens=100`` budget, the step limit, or the
model's context window), which is the behaviour these tests pin down.
"""

import pytest
from langchain_core.messages import AIMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests

from stepgraph.integrations.chat_model import ChatStepRouter
from stepgraph.testbed import testbed_task as shipped_task

pytestmark = pytest.mark.integration


class TestChatStepRouterIntegration(ChatModelIntegrationTests):
    """Feature switches say what ChatStepRouter does not do: tools, structured output, non-text inputs."""

    @property
    def chat_model_class(self) -> type[ChatStepRouter]:
        return ChatStepRouter

    @property
    def chat_model_params(self) -> dict:
        return {"seed": 0}

    @property
    def standard_chat_model_params(self) -> dict:
        # max_retries is refused with a ConfigError (answers are not retried; backends retry their calls).
        return {k: v for k, v in super().standard_chat_model_params.items() if k != "max_retries"}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False  # the model name is the graph's; other models come with another graph

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        # Within one answer, each step reuses the keys/values of the prompt prefix already computed.
        llm = ChatStepRouter(seed=0)
        question = shipped_task().generate("test", 1, seed=13)[0].question
        if not stream:
            return llm.invoke(question)
        full = None
        for chunk in llm.stream(question):
            full = chunk if full is None else full + chunk
        return full
