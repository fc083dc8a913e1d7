"""`stepgraph mcp` over stdio: the SDK's own client session, and langchain-mcp-adapters inside a LangGraph agent."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from stepgraph.testbed import DEFAULT_TIERS
from stepgraph.testbed import testbed_task as shipped_task

pytestmark = pytest.mark.integration

MAX_STEPS = 12
SERVER = StdioServerParameters(
    command=sys.executable,
    args=["-m", "stepgraph", "mcp", "--max-steps", str(MAX_STEPS), "--max-question-chars", "2000"],
    env={**os.environ, "OMP_NUM_THREADS": "1"},
)
PROBLEM = shipped_task().generate("test", 1, seed=11)[0]


def field(obj: Any, snake: str, camel: str) -> Any:
    """A result field by its mcp 2.x (snake_case) or 1.x (camelCase) name."""
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel)


def test_sdk_client_session_over_stdio():
    async def session_run() -> dict[str, Any]:
        async with stdio_client(SERVER) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            results = {"tools": tools}
            results["good"] = await session.call_tool("stepwise_reasoner", {"question": PROBLEM.question, "max_steps": 8})
            results["zero_steps"] = await session.call_tool("stepwise_reasoner", {"question": PROBLEM.question, "max_steps": 0})
            results["over_limit"] = await session.call_tool("stepwise_reasoner", {"question": PROBLEM.question,
                                                                                   "max_steps": MAX_STEPS + 1})
            results["blank"] = await session.call_tool("stepwise_reasoner", {"question": "   "})
            results["missing"] = await session.call_tool("stepwise_reasoner", {"max_steps": 3})
            results["after_errors"] = await session.call_tool("stepwise_reasoner", {"question": PROBLEM.question})
            return results

    results = asyncio.run(session_run())
    [tool] = results["tools"]
    schema = field(tool, "input_schema", "inputSchema")
    assert tool.name == "stepwise_reasoner" and schema["required"] == ["question"]
    assert schema["properties"]["max_steps"]["maximum"] == MAX_STEPS
    assert {"answer", "steps", "cost"} <= set(field(tool, "output_schema", "outputSchema")["properties"])

    good = results["good"]
    assert not field(good, "is_error", "isError")
    out = field(good, "structured_content", "structuredContent")
    assert out["stop_reason"] == "final_answer" and out["steps"][-1]["text"].endswith(f"\\boxed{{{out['answer']}}}")
    assert all(step["tier"] in range(DEFAULT_TIERS) for step in out["steps"]) and len(out["steps"]) <= 8
    escalated = sum(step["escalated"] for step in out["steps"])
    assert escalated <= out["escalations"] <= (DEFAULT_TIERS - 1) * escalated  # a step may go up more than one tier
    assert out["cost"]["flops"] > 0 and set(out["cost"]["per_tier"]) <= {str(k) for k in range(DEFAULT_TIERS)}

    for name, mentions in [("zero_steps", "max_steps"), ("over_limit", "max_steps"), ("blank", "question"),
                           ("missing", "question")]:
        result = results[name]
        assert field(result, "is_error", "isError"), name
        assert mentions in result.content[0].text, (name, result.content[0].text)
    # the errors did not take the server down, and the same question gets the same answer
    assert field(results["after_errors"], "structured_content", "structuredContent")["answer"] == out["answer"]


def test_streamable_http_transport_with_an_api_key(tmp_path):
    import httpx
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    key = "mcp-test-key-not-secret"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([SERVER.command, *SERVER.args, "--transport", "streamable-http", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env={**SERVER.env, "STEPGRAPH_API_KEY": key})
    try:
        deadline = time.time() + 180
        while True:
            assert process.poll() is None and time.time() < deadline, f"server did not start; see {log.name}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)

        refused = httpx.post(f"http://127.0.0.1:{port}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                             headers={"accept": "application/json, text/event-stream"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"

        async def call() -> Any:
            client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
            async with client, streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=client) as streams:  # noqa: SIM117 - 1.x yields 3 streams, 2.x 2
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    return await session.call_tool("stepwise_reasoner", {"question": PROBLEM.question})

        result = asyncio.run(call())
        assert not field(result, "is_error", "isError")
        assert field(result, "structured_content", "structuredContent")["stop_reason"] == "final_answer"
        assert key not in Path(log.name).read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_langchain_mcp_adapters_in_a_langgraph_agent():
    adapters = pytest.importorskip("langchain_mcp_adapters.tools",
                                   reason="langchain-mcp-adapters is not installed or does not work with this mcp SDK")
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    class ScriptedAgentModel(BaseChatModel):
        """Calls the tool once with the question, then relays what it returned."""

        @property
        def _llm_type(self) -> str:
            return "scripted-agent"

        def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedAgentModel":
            return self

        def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
            results = [m for m in messages if m.type == "tool"]
            if results:
                message = AIMessage(content=f"Result: {results[-1].content}")
            else:
                call = {"name": "stepwise_reasoner", "args": {"question": PROBLEM.question}, "id": "call-1",
                        "type": "tool_call"}
                message = AIMessage(content="", tool_calls=[call])
            return ChatResult(generations=[ChatGeneration(message=message)])

    async def agent_run() -> dict[str, Any]:
        async with stdio_client(SERVER) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = await adapters.load_mcp_tools(session)
            model = ScriptedAgentModel()
            builder = StateGraph(MessagesState)  # the ReAct loop: model -> tools -> model -> END
            builder.add_node("model", lambda state: {"messages": [model.invoke(state["messages"])]})
            builder.add_node("tools", ToolNode(tools))
            builder.add_edge(START, "model")
            builder.add_conditional_edges("model", tools_condition)
            builder.add_edge("tools", "model")
            agent = builder.compile()
            return await agent.ainvoke({"messages": [HumanMessage(PROBLEM.question)]})

    messages = asyncio.run(agent_run())["messages"]
    tool_message = next(m for m in messages if m.type == "tool")
    assert tool_message.status == "success"
    assert '"answer"' in str(tool_message.content) and "tier" in str(tool_message.content)
    assert messages[-1].content.startswith("Result: ")


def test_example_mcp_client_runs():
    example = Path(__file__).resolve().parents[1] / "examples" / "mcp_client.py"
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "answer: 40" in done.stdout and "tool error: True" in done.stdout and "max_steps" in done.stdout
