"""What the router pays on questions outside its tiers' domain, with and without `stick_after`.

The shipped tiers know one template ("Ann has 12 coins. She gets 7 more. ..."); plain questions
written by hand are outside it, every tier answers them wrong, and the gate escalates most steps,
so each step pays for a draft and for the target. `RouterContext(stick_after=N)` stops paying for
drafts after N escalated steps in a row. This prints generated FLOPs as a multiple of the target
alone, off domain and on the in-domain test split.

    python examples/off_domain.py
"""

from __future__ import annotations

from stepgraph.context import RouterContext
from stepgraph.graph import build_graph
from stepgraph.integrations.studio import default_graph
from stepgraph.routing.gates import AlwaysDraftGate
from stepgraph.testbed import load_pair, task

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


def generated_flops(graph, questions: list[str], context: RouterContext) -> float:
    return sum(graph.invoke({"question": q}, context=context)["totals"]["flops"] for q in questions)


def main() -> None:
    graph = default_graph()
    target = load_pair()[1]
    target_alone = build_graph([target, target], AlwaysDraftGate())  # the target drafts every step itself
    in_domain = [p.question for p in task.generate("test", 30, seed=11)]
    for name, questions in (("off domain", OFF_DOMAIN), ("in domain", in_domain)):
        target = generated_flops(target_alone, questions, RouterContext())
        for stick_after in (None, 2, 1):
            routed = generated_flops(graph, questions, RouterContext(stick_after=stick_after))
            print(f"{name:10s} stick_after={stick_after!s:4s} routed / target alone = {routed / target:.3f}")


if __name__ == "__main__":
    main()
