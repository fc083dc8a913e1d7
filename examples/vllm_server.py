"""The graph on vLLM OpenAI-compatible servers, through langchain-openai's ChatOpenAI.

Start one server per model (here the shipped pair on CPU; see the README for Qwen on a GPU):
    python -m vllm.entrypoints.openai.api_server --model stepgraph/testbed/models/draft \
        --served-model-name draft --port 8001 --logprobs-mode raw_logits --dtype float32 --enforce-eager --max-model-len 256
    python -m vllm.entrypoints.openai.api_server --model stepgraph/testbed/models/target \
        --served-model-name target --port 8002 --dtype float32 --enforce-eager --max-model-len 256
Run:
    python examples/vllm_server.py --draft-url http://127.0.0.1:8001/v1 --target-url http://127.0.0.1:8002/v1

The server continues the partial assistant message (`continue_final_message`), so each step is
generated exactly as a local model would; the draft server reports raw logits for STEER's score.
"""

import argparse

from langchain_openai import ChatOpenAI

from stepgraph import ChatStepModel, RouterContext, build_graph, count_parameters, resolve_gate
from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR


def vllm_tier(url: str, model: str, n_params: int, *, raw_logits: bool) -> ChatStepModel:
    chat = ChatOpenAI(base_url=url, api_key="EMPTY", model=model, logprobs=True, top_logprobs=5, timeout=60)
    return ChatStepModel(chat, n_params=n_params, continue_final_message=True, logprobs_are_logits=raw_logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft-url", required=True)
    parser.add_argument("--target-url", required=True)
    parser.add_argument("--draft-model", default="draft", help="the draft server's --served-model-name")
    parser.add_argument("--target-model", default="target", help="the target server's --served-model-name")
    args = parser.parse_args()

    draft = vllm_tier(args.draft_url, args.draft_model, count_parameters(DRAFT_MODEL_DIR), raw_logits=True)
    target = vllm_tier(args.target_url, args.target_model, count_parameters(TARGET_MODEL_DIR), raw_logits=False)
    graph = build_graph([draft, target], resolve_gate("threshold"))
    question = "Anna has 12 coins. She gets 7 more. She gives away 5. Ben has three times as many coins as Anna. How many coins does Ben have?"
    for mode, chunk in graph.stream({"question": question}, context=RouterContext(seed=0), stream_mode=["custom", "values"]):
        if mode == "custom":
            print(f"tier {chunk['tier']}: {chunk['text']}")
        else:
            result = chunk
    print("answer:", result["answer"], "| escalations:", result["escalations"])


if __name__ == "__main__":
    main()
