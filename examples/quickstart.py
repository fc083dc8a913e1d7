"""Quickstart: answer a question with the shipped tiers (draft → mid → target) and the default gate.

Run: python examples/quickstart.py
"""

from stepgraph import RouterContext, build_graph, load_tiers, resolve_gate


def main() -> None:
    graph = build_graph(load_tiers(), resolve_gate())
    question = "Anna has 12 coins. She gets 7 more. She gives away 5. Ben has three times as many coins as Anna. How many coins does Ben have?"
    result = graph.invoke({"question": question}, context=RouterContext(seed=0))
    for step in result["steps"]:
        print(f"tier {step['tier']}: {step['text']}")
    print("answer:", result["answer"], "| FLOPs:", f"{result['totals']['flops']:.3e}", "| escalations:", result["escalations"],
          "| in domain:", result["in_domain"])  # False: the target wrote every step


if __name__ == "__main__":
    main()
