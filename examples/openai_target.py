"""A local Qwen-style draft with an OpenAI model (GPT-4.1-mini) as the target, through ChatOpenAI.

Run (needs OPENAI_API_KEY; `pip install "stepgraph[openai]"`):
    python examples/openai_target.py
    python examples/openai_target.py --draft path/to/Qwen2.5-Math-1.5B-Instruct

The OpenAI API cannot continue a partial assistant message, so the target gets the steps so far
in the user turn and is asked for the next step only (`stepgraph.models.chat.CONTINUE_PROMPT`).
It returns top-5 log-probabilities, not logits: its steps carry the API confidence score. Any
OpenAI-compatible endpoint works the same way with OPENAI_BASE_URL set.
"""

import argparse

from langchain_openai import ChatOpenAI

from stepgraph import ChatStepModel, RouterContext, TransformersStepModel, build_graph, resolve_gate
from stepgraph.testbed import DRAFT_MODEL_DIR

GPT_41_MINI_PARAMS = 8_000_000_000  # not published; an estimate, used only for the FLOPs column


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft", default=str(DRAFT_MODEL_DIR), help="local draft model directory")
    parser.add_argument("--target-model", default="gpt-4.1-mini")
    args = parser.parse_args()

    draft = TransformersStepModel(args.draft)
    api = ChatOpenAI(model=args.target_model, logprobs=True, top_logprobs=5, timeout=60, max_retries=0)
    target = ChatStepModel(api, n_params=GPT_41_MINI_PARAMS, max_retries=3)  # our retries, with backoff
    graph = build_graph([draft, target], resolve_gate("threshold"))
    question = "Anna has 12 coins. She gets 7 more. She gives away 5. Ben has three times as many coins as Anna. How many coins does Ben have?"
    result = graph.invoke({"question": question}, context=RouterContext(seed=0, max_steps=6))
    for step in result["steps"]:
        print(f"{step['model']}: {step['text']}")
    usd = result["totals"]["usd"]
    print("answer:", result["answer"], "| escalations:", result["escalations"], f"| ${usd:.6f}")


if __name__ == "__main__":
    main()
