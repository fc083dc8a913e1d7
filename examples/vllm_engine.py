"""The graph on vLLM offline engines, with a batch of questions decoded together.

Run (after `pip install "stepgraph[vllm]"`, see the README's CPU recipe):
    python examples/vllm_engine.py                      # the shipped pair, on CPU
    python examples/vllm_engine.py --draft Qwen/Qwen2.5-Math-1.5B-Instruct --target Qwen/Qwen2.5-Math-7B-Instruct --gpu

The draft's engine reports raw logits (`logprobs_mode="raw_logits"`), so the STEER score is the
exact max logit, but there are no log-probabilities: the gate is the shipped policy trained
without them (`LOGITS_ONLY_POLICY_DIR`). `graph.batch` runs the questions in threads; their
steps share engine calls.
"""

import argparse
import time

from stepgraph import RouterContext, VLLMStepModel, build_graph, resolve_gate
from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR, testbed_task
from stepgraph.testbed.defaults import LOGITS_ONLY_POLICY_DIR
from stepgraph.testbed.vllm_serving import ENGINE_ARGS, configure_environment

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft", default=str(DRAFT_MODEL_DIR), help="draft model directory or hub id")
    parser.add_argument("--target", default=str(TARGET_MODEL_DIR), help="target model directory or hub id")
    parser.add_argument("--policy", default=str(LOGITS_ONLY_POLICY_DIR),
                        help="policy artifact (default: the shipped pair's logits-only policy; train one for other models)")
    parser.add_argument("--gpu", action="store_true", help="vLLM's GPU defaults instead of the CPU testbed settings")
    parser.add_argument("--questions", type=int, default=8, help="test-split questions to answer in one batch")
    args = parser.parse_args()

    configure_environment(".vllm-cache")
    engine_args = {"gpu_memory_utilization": 0.4} if args.gpu else ENGINE_ARGS
    system = QWEN_SYSTEM if args.gpu else None
    with VLLMStepModel(args.draft, system_prompt=system, engine_kwargs=engine_args) as draft, \
            VLLMStepModel(args.target, system_prompt=system, engine_kwargs=engine_args) as target:
        graph = build_graph([draft, target], resolve_gate("policy", path=args.policy))
        problems = testbed_task().generate("test", args.questions, seed=5)
        started = time.perf_counter()
        results = graph.batch([{"question": p.question} for p in problems], {"max_concurrency": len(problems)},
                              context=RouterContext(seed=0))
        seconds = time.perf_counter() - started
        for problem, result in zip(problems, results):
            print(f"{result['answer']!s:>6} (expected {problem.answer}) | steps {len(result['steps'])} | escalations {result['escalations']}")
        steps = sum(len(r["steps"]) for r in results)
        print(f"{steps} steps in {seconds:.2f} s; draft engine iterations by steps decoded: {dict(sorted(draft.batch_sizes.items()))}")


if __name__ == "__main__":  # vLLM starts worker processes: the guard is required
    main()
