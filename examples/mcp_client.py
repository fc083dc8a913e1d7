"""Call the `stepwise_reasoner` tool of `stepgraph mcp` with the MCP Python SDK's client over stdio.

Run: python examples/mcp_client.py
The client launches `stepgraph mcp` itself (as Claude Desktop, Cursor or any MCP host would, with
the command `stepgraph mcp`) and stops it when the session closes.
"""

import asyncio
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

QUESTION = "Eli has 12 shells. She buys 8 more. Ana has twice as many shells as Eli. How many shells does Ana have?"


async def main() -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "stepgraph", "mcp"])
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        [tool] = (await session.list_tools()).tools
        print(f"tool: {tool.name}")
        result = await session.call_tool(tool.name, {"question": QUESTION, "max_steps": 8})
        # mcp 2.x names the field structured_content, mcp 1.x structuredContent
        out = getattr(result, "structured_content", None) or getattr(result, "structuredContent", None)
        for step in out["steps"]:
            print(f"  [tier {step['tier']}] {step['text']}")
        print(f"answer: {out['answer']}  (escalations: {out['escalations']}, {out['cost']['flops']:.3e} FLOPs)")
        bad = await session.call_tool(tool.name, {"question": QUESTION, "max_steps": 0})
        is_error = getattr(bad, "is_error", None) or getattr(bad, "isError", None)
        print(f"max_steps=0 -> tool error: {is_error}: {bad.content[0].text}")


if __name__ == "__main__":
    asyncio.run(main())
