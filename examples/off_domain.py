"""What the router pays on questions outside its tiers' domain: the out-of-domain signal and `stick_after`.

The shipped tiers know GSM8K-easy word problems about whole quantities (stepgraph/testbed/TASK_V2.md).
Questions outside that (requests that are not arithmetic word problems, and arithmetic the tiers
never saw: percentages, fractions, decimals, times, unit conversions) are answered wrong by every
tier while the gate escalates many steps, so such a step pays for a draft and for the target. Two
remedies: the out-of-domain signal (`stepgraph.domain`: the shipped policy's `domain` field; a
question the target finds unusually unlikely is written by the target from its first step, no
drafts paid) and `RouterContext(stick_after=N)` (after N escalated steps in a row, no more drafts).
This prints, for the default router (draft → mid → target and its policy), generated FLOPs as a
multiple of the target alone (and with prefill FLOPs counted too) off domain, on fresh in-domain
test-split questions and on the hand-written in-domain questions (examples/handwritten_questions.jsonl),
with coverage against the target alone, without and with the signal; then how often the signal
flags each set.

    python examples/off_domain.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from stepgraph.answers import is_correct
from stepgraph.context import RouterContext
from stepgraph.domain import score_question
from stepgraph.graph import build_graph
from stepgraph.routing.gates import AlwaysDraftGate, PolicyGate
from stepgraph.testbed import load_tiers, testbed_task
from stepgraph.testbed.defaults import resolve_gate

HANDWRITTEN = Path(__file__).with_name("handwritten_questions.jsonl")

OFF_DOMAIN = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Translate 'good morning' into Spanish.",
    "Who wrote Hamlet?",
    "How do I reset my password?",
    "Explain photosynthesis in one sentence.",
    "What is the derivative of x squared?",
    "Is 97 a prime number?",
    "List three colours of the rainbow.",
    "Summarize the plot of Romeo and Juliet.",
    "What time is it in Tokyo when it is noon in London?",
    "A train leaves at 3 pm and arrives at 7 pm. How long is the trip?",
    "A shirt costs $40 and is 25% off. What is the sale price?",
    "Tom ate 3/8 of a pizza and Jim ate 1/4. How much of the pizza is left?",
    "A rope is 2.5 meters long. How many centimeters is that?",
    "Solve for x: 3x + 7 = 22.",
    "What is the area of a circle with radius 3?",
    "A car travels 60 km per hour for 2.5 hours. How far does it go?",
    "What is 15% of 80?",
    "The temperature was -4 degrees and rose by 9 degrees. What is it now?",
    "How many seconds are in 3 hours?",
    "If a triangle has sides 3, 4 and 5, what is its area?",
    "What is the square root of 144?",
    "Anna is twice as old as Ben was 4 years ago. Ben is 10. How old is Anna?",
    "A recipe needs 3 cups of flour for 12 cookies. How much flour for 30 cookies?",
    "What is the probability of rolling a 6 twice in a row?",
    "Convert 5 miles to kilometers.",
    "Write a haiku about autumn leaves.",
    "What is the GDP of Germany?",
    "Give me a recipe for pancakes.",
]


def run(graph, questions: list[str], context: RouterContext, seeds: tuple[int, ...]) -> list[dict]:
    return [graph.invoke({"question": q}, context=dataclasses.replace(context, seed=seed)) for seed in seeds for q in questions]


def flops(results: list[dict], prefill: bool = False) -> float:
    return sum(r["totals"]["flops"] + (r["totals"]["prefill_flops"] if prefill else 0.0) for r in results)


def main(in_domain_questions: int = 60, flag_questions: int = 1000, seeds: tuple[int, ...] = (0,)) -> None:
    tiers = load_tiers()  # the default router: draft → mid → target
    policy = resolve_gate("policy", n_tiers=len(tiers))
    graphs = {"off": build_graph(tiers, PolicyGate(dataclasses.replace(policy.artifact, domain=None))),
              "on": build_graph(tiers, policy)}
    target_alone = build_graph([tiers[-1], tiers[-1]], AlwaysDraftGate())  # the target drafts every step itself
    problems = testbed_task().generate("test", in_domain_questions, seed=11)
    handwritten = [json.loads(line) for line in HANDWRITTEN.read_text().splitlines() if line.strip()]
    sets = {"off domain": (OFF_DOMAIN, None),
            "in domain": ([p.question for p in problems], [str(p.answer) for p in problems]),
            "handwritten": ([h["q"] for h in handwritten], [str(h["a"]) for h in handwritten])}
    for name, (questions, answers) in sets.items():
        alone = run(target_alone, questions, RouterContext(), seeds)
        for signal, graph in graphs.items():
            for stick_after in (None, 2):
                routed = run(graph, questions, RouterContext(stick_after=stick_after), seeds)
                line = (f"{name:10s} signal={signal:3s} stick_after={stick_after!s:4s} routed / target alone = "
                        f"{flops(routed) / flops(alone):.3f} (with prefill {flops(routed, True) / flops(alone, True):.3f})")
                if answers is not None:  # relative coverage: right, or the target alone is wrong too
                    expected = answers * len(seeds)
                    covered = sum(is_correct(r["answer"], a) or not is_correct(t["answer"], a) for r, t, a in zip(routed, alone, expected))
                    right = sum(is_correct(r["answer"], a) for r, a in zip(routed, expected))
                    line += f", coverage {covered / len(expected):.3f}, accuracy {right / len(expected):.3f}"
                print(line)
        if answers is not None:
            right = sum(is_correct(t["answer"], a) for t, a in zip(alone, answers * len(seeds)))
            print(f"{name:10s} target alone accuracy {right / len(alone):.3f} ({len(questions)} questions x seeds {seeds})")
    domain, scorer = policy.domain, tiers[policy.domain.tier]
    fresh = [p.question for p in testbed_task().generate("test", flag_questions, seed=12)]
    for name, questions in (("fresh in-domain", fresh), ("handwritten", sets["handwritten"][0]), ("off-domain", OFF_DOMAIN)):
        flagged = sum(score_question(scorer, q).mean_logprob < domain.threshold for q in questions)
        print(f"flagged out of domain: {name} {flagged}/{len(questions)} = {flagged / len(questions):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds of every question set (default: 0)")
    main(seeds=tuple(parser.parse_args().seeds))
