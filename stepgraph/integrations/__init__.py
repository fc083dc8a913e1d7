"""Ways into the routed graph from LangChain and LangGraph: a chat model, a tool, the Studio graph."""
