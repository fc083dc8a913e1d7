"""The Studio entry ``langgraph.json`` points at: the graph is built inside ``stepgraph``."""

from stepgraph.integrations.studio import served_graph

graph = served_graph()
