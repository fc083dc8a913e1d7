"""The Studio entry ``langgraph.json`` points at: the graph is built inside ``stepgraph``."""

from stepgraph.integrations.studio import default_graph

graph = default_graph()
