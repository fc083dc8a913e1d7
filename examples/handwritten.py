"""Each shipped tier alone on questions written by hand (examples/handwritten_questions.jsonl), greedy.

The generator's own splits measure the task as generated; these 30 questions were written by hand
inside the documented domain (stepgraph/testbed/TASK_V2.md), before any tier was run on them, the
way a new user would phrase them. Prints each tier's count of right answers and the target's misses.

    python examples/handwritten.py
"""

from __future__ import annotations

import json
from pathlib import Path

from stepgraph.answers import extract_boxed, is_correct
from stepgraph.testbed import TIER_DIRS
from stepgraph.testbed.measure import batched_solutions, load_hf

QUESTIONS = Path(__file__).with_name("handwritten_questions.jsonl")


def main() -> None:
    items = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    for path in TIER_DIRS[3]:
        model, tokenizer = load_hf(path)
        answers = batched_solutions(model, tokenizer, [item["q"] for item in items], name=path.name)
        right = 0
        for item, steps in zip(items, answers):
            if is_correct(extract_boxed("".join(step.text for step in steps)), str(item["a"])):
                right += 1
            elif path == TIER_DIRS[3][-1]:
                print(f"  {path.name} missed: {item['q']} -> {' | '.join(s.text.strip() for s in steps)}")
        print(f"{path.name}: {right} of {len(items)} right")


if __name__ == "__main__":
    main()
