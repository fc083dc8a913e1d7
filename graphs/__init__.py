"""Ready-made compiled graphs (``langgraph.json`` points here)."""
