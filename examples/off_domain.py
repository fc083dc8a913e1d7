"""What the router pays on questions outside its tiers' domain: the out-of-domain signal and `stick_after`.

The shipped tiers know one template ("Ann has 12 coins. She gets 7 more. ..."); plain questions
written by hand are outside it, every tier answers them wrong, and the gate escalates most steps,
so each step pays for a draft and for the target. Two remedies: the out-of-domain signal
(`stepgraph.domain`: the shipped policy's `domain` field; a question the target finds unusually
unlikely is written by the target from its first step, no drafts paid) and
`RouterContext(stick_after=N)` (after N escalated steps in a row, no more drafts). This prints
generated FLOPs as a multiple of the target alone (and with prefill FLOPs counted too), off domain
and on fresh in-domain test-split questions with their coverage, without and with the signal; then
how often the signal flags fresh in-domain questions and the off-domain ones.

    python examples/off_domain.py
"""

from __future__ import annotations

import dataclasses

from stepgraph.answers import is_correct
from stepgraph.context import RouterContext
from stepgraph.domain import score_question
from stepgraph.graph import build_graph
from stepgraph.routing.gates import AlwaysDraftGate, PolicyGate
from stepgraph.testbed import load_pair, task
from stepgraph.testbed.defaults import DEFAULT_POLICY_DIR

OFF_DOMAIN = [
    "Tom has 5 pens. He buys 3 more. How many pens does he have?",
    "A box holds 12 eggs. How many eggs are in 5 boxes?",
    "Anna shares 24 candies equally among 4 friends. How many does each get?",
    "Eve has 3 pens. She gets 4 more. She loses 2. How many pens does she have?",
    "A bus has 40 seats. 23 people get on. How many seats are empty?",
    "Mia reads 15 pages a day. How many pages does she read in 6 days?",
    "A pizza is cut into 8 slices. Joe eats 3. How many slices are left?",
    "Sam has twice as many marbles as Lily. Lily has 9. How many does Sam have?",
    "There are 7 birds on a tree. 4 fly away. How many are left?",
    "Each ticket costs $6. How much do 9 tickets cost?",
    "Kate had 50 dollars. She spent 18 dollars on a book. How much money is left?",
    "A farmer has 14 cows and 9 pigs. How many animals does he have?",
    "Leo runs 3 miles every morning. How far does he run in a week?",
    "A class has 28 students. Half of them are girls. How many boys are there?",
    "Nina bakes 36 cookies and puts them in bags of 6. How many bags does she fill?",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Translate 'good morning' into Spanish.",
    "Who wrote Hamlet?",
    "How do I reset my password?",
    "Explain photosynthesis in one sentence.",
    "What is the derivative of x squared?",
    "Is 97 a prime number?",
    "List three colours of the rainbow.",
    "What time is it in Tokyo when it is noon in London?",
    "A train leaves at 3 pm and arrives at 7 pm. How long is the trip?",
    "Paul has 4 boxes with 7 apples each. He gives away 10 apples. How many are left?",
    "The temperature was 12 degrees and rose by 9 degrees. What is it now?",
    "Sara has 45 stickers and gives 15 to her brother. How many does she keep?",
    "A shop sells 120 apples on Monday and 95 on Tuesday. How many in total?",
]


def run(graph, questions: list[str], context: RouterContext) -> list[dict]:
    return [graph.invoke({"question": q}, context=context) for q in questions]


def flops(results: list[dict], prefill: bool = False) -> float:
    return sum(r["totals"]["flops"] + (r["totals"]["prefill_flops"] if prefill else 0.0) for r in results)


def main(in_domain_questions: int = 60, flag_questions: int = 1000) -> None:
    tiers = load_pair()
    policy = PolicyGate.from_path(DEFAULT_POLICY_DIR)
    graphs = {"off": build_graph(tiers, PolicyGate(dataclasses.replace(policy.artifact, domain=None))),
              "on": build_graph(tiers, policy)}
    target_alone = build_graph([tiers[1], tiers[1]], AlwaysDraftGate())  # the target drafts every step itself
    problems = task.generate("test", in_domain_questions, seed=11)
    for name, questions in (("off domain", OFF_DOMAIN), ("in domain", [p.question for p in problems])):
        alone = run(target_alone, questions, RouterContext())
        for signal, graph in graphs.items():
            for stick_after in (None, 2):
                routed = run(graph, questions, RouterContext(stick_after=stick_after))
                line = (f"{name:10s} signal={signal:3s} stick_after={stick_after!s:4s} routed / target alone = "
                        f"{flops(routed) / flops(alone):.3f} (with prefill {flops(routed, True) / flops(alone, True):.3f})")
                if name == "in domain":  # relative coverage: right, or the target alone is wrong too
                    covered = sum(is_correct(r["answer"], str(p.answer)) or not is_correct(a["answer"], str(p.answer))
                                  for r, a, p in zip(routed, alone, problems))
                    line += f", coverage {covered / len(problems):.3f}"
                print(line)
    domain, scorer = policy.domain, tiers[policy.domain.tier]
    fresh = [p.question for p in task.generate("test", flag_questions, seed=12)]
    for name, questions in (("fresh in-domain", fresh), ("off-domain", OFF_DOMAIN)):
        flagged = sum(score_question(scorer, q).mean_logprob < domain.threshold for q in questions)
        print(f"flagged out of domain: {name} {flagged}/{len(questions)} = {flagged / len(questions):.3f}")


if __name__ == "__main__":
    main()
