"""An agent that calls the routed graph as a tool.

Run: python examples/agent_tool.py
With OPENAI_API_KEY set (and `pip install -e ".[openai]"`), the agent is GPT-4.1-mini; without
it, a scripted stand-in model makes the tool call, so the example runs offline.
"""

import os
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from stepgraph import routed_reasoning_tool

PROBLEM = "Cara has 14 books. She buys 9 more. She gives away 5. How many books does she have?"


class OfflineAgentModel(BaseChatModel):
    """Stand-in for a real agent model: calls the tool once, then relays its answer."""

    @property
    def _llm_type(self) -> str:
        return "offline-agent"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "OfflineAgentModel":
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        results = [m for m in messages if m.type == "tool"]
        if results:
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=f"Result: {results[-1].content}"))])
        call = {"name": "stepwise_reasoner", "args": {"question": PROBLEM}, "id": "call-1", "type": "tool_call"}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="", tool_calls=[call]))])


def main() -> None:
    if os.environ.get("OPENAI_API_KEY"):
        from langchain_openai import ChatOpenAI

        model: BaseChatModel = ChatOpenAI(model="gpt-4.1-mini")
    else:
        model = OfflineAgentModel()
    agent = create_agent(model, [routed_reasoning_tool()])
    result = agent.invoke({"messages": [HumanMessage(f"Use the stepwise reasoner to solve: {PROBLEM}")]})
    for message in result["messages"]:
        print(f"{message.type}: {message.content}")


if __name__ == "__main__":
    main()
