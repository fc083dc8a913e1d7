"""The testbed task: multi-step arithmetic word problems whose every step can be checked.

A problem starts from a quantity and applies a few operations, one per sentence:

    Question: Ann has 12 coins. She gets 7 more. She gives away 5. She multiplies them by 3.
              How many coins does she have?
    Solution: 12+7=19

              19-5=14

              14*3=42

              \\boxed{42}

Each solution step computes one intermediate quantity, so ``verify_step`` can decide exactly
whether a generated step is right given the steps before it. Problems are assigned to the
train / calibration / test splits by a hash of their question, so the splits are disjoint by
construction and every split is a reproducible function of its seed.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Literal

from stepgraph.errors import ConfigError

Split = Literal["train", "calibration", "test"]
Op = Literal["+", "-", "*"]

STEP_SEPARATOR = "\n\n"
NAMES = [("Ann", "She"), ("Ben", "He"), ("Cara", "She"), ("Dan", "He"), ("Eve", "She"), ("Finn", "He")]
ITEMS = ["coins", "apples", "cards", "books", "stamps", "shells"]
ADD_TEMPLATES = ["{p} gets {k} more.", "{p} finds {k} more.", "{p} buys {k} more."]
SUB_TEMPLATES = ["{p} gives away {k}.", "{p} loses {k}.", "{p} sells {k}."]
MUL_TEMPLATES = ["{p} multiplies them by {k}."]
# Ten hash buckets per problem: 0-7 train, 8 calibration, 9 test.
_SPLIT_BUCKETS: dict[Split, range] = {"train": range(8), "calibration": range(8, 9), "test": range(9, 10)}
_EQUATION = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")
_BOXED_STEP = re.compile(r"^\\boxed\{(\d+)\}$")


@dataclass(frozen=True)
class Difficulty:
    """How hard generated problems are.

    Attributes:
        min_ops: fewest operations (solution steps before the final answer).
        max_ops: most operations.
        start_max: the starting quantity is drawn from 2..start_max.
        operand_max: added or removed amounts are drawn from 1..operand_max.
        mul_max: multipliers are drawn from 2..mul_max.
        value_max: problems whose intermediate values exceed this are redrawn.
        ops: which operations may appear.
    """

    min_ops: int = 2
    max_ops: int = 4
    start_max: int = 60
    operand_max: int = 30
    mul_max: int = 4
    value_max: int = 400
    ops: tuple[Op, ...] = ("+", "-", "*")


@dataclass(frozen=True)
class Problem:
    """One word problem with its exact solution."""

    question: str
    start: int
    operations: tuple[tuple[Op, int], ...]
    steps: tuple[str, ...] = field(compare=False)

    @property
    def answer(self) -> int:
        return _values(self.start, self.operations)[-1]

    @property
    def solution(self) -> str:
        return STEP_SEPARATOR.join(self.steps)


def _apply(op: Op, left: int, right: int) -> int:
    return left + right if op == "+" else left - right if op == "-" else left * right


def _values(start: int, operations: tuple[tuple[Op, int], ...]) -> list[int]:
    values = [start]
    for op, k in operations:
        values.append(_apply(op, values[-1], k))
    return values


def _draw(rng: random.Random, difficulty: Difficulty) -> Problem:
    while True:
        start = rng.randint(2, difficulty.start_max)
        operations: list[tuple[Op, int]] = []
        value = start
        for _ in range(rng.randint(difficulty.min_ops, difficulty.max_ops)):
            op = rng.choice(difficulty.ops)
            k = rng.randint(2, difficulty.mul_max) if op == "*" else rng.randint(1, difficulty.operand_max)
            if op == "-" and k > value:  # quantities never go negative
                op = "+"
            operations.append((op, k))
            value = _apply(op, value, k)
        if value <= difficulty.value_max and max(_values(start, tuple(operations))) <= difficulty.value_max:
            break
    name, pronoun = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    sentences = [f"{name} has {start} {item}."]
    for op, k in operations:
        templates = ADD_TEMPLATES if op == "+" else SUB_TEMPLATES if op == "-" else MUL_TEMPLATES
        sentences.append(rng.choice(templates).format(p=pronoun, k=k))
    sentences.append(f"How many {item} does {pronoun.lower()} have?")
    ops = tuple(operations)
    values = _values(start, ops)
    steps = tuple(f"{values[i]}{op}{k}={values[i + 1]}" for i, (op, k) in enumerate(ops))
    return Problem(" ".join(sentences), start, ops, steps + (f"\\boxed{{{values[-1]}}}",))


def split_of(question: str) -> Split:
    """The split a question belongs to (a pure function of its text)."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % 10
    return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def generate(split: Split, n: int, seed: int = 0, difficulty: Difficulty = Difficulty()) -> list[Problem]:
    """Generate ``n`` distinct problems of one split, reproducibly.

    Args:
        split: "train", "calibration" or "test"; splits never share a question.
        n: how many problems.
        seed: the same (split, n, seed, difficulty) always gives the same list.
        difficulty: the problem distribution.

    Example:
        >>> problems = generate("test", 3, seed=0)
        >>> len(problems), problems[0].steps[-1].startswith("\\\\boxed")
        (3, True)
    """
    if split not in ("train", "calibration", "test"):  # no draw would ever land in it
        raise ConfigError(f"Unknown split {split!r}; task v1 has train, calibration and test.")
    rng = random.Random(f"{split}:{seed}")
    seen: set[str] = set()
    problems: list[Problem] = []
    while len(problems) < n:
        problem = _draw(rng, difficulty)
        if problem.question in seen or split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems


def verify_step(problem: Problem, prior_steps: list[str] | tuple[str, ...], step: str) -> bool:
    """Whether ``step`` is a correct next step of ``problem`` given the steps before it.

    A step is judged locally: it must apply the problem's next operation to the value the
    previous step computed (as written, even if that value was wrong) and get the arithmetic
    right; the final step must box the last computed value once every operation is done.
    Any other text, or a step after the final answer, is wrong.
    """
    step = step.strip()
    carried = problem.start
    done = 0
    for prior in prior_steps:
        match = _EQUATION.match(prior.strip())
        if match is None:
            return False  # a prior final answer or garbage: nothing valid can follow
        carried = int(match.group(4))
        done += 1
    if done < len(problem.operations):
        match = _EQUATION.match(step)
        if match is None:
            return False
        left, op, right, result = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        expected_op, expected_k = problem.operations[done]
        return (left, op, right) == (carried, expected_op, expected_k) and result == _apply(expected_op, left, right)
    boxed = _BOXED_STEP.match(step)
    return boxed is not None and int(boxed.group(1)) == carried


def boxed_value(step: str) -> int | None:
    """The integer in the step's last ``\\boxed{}``, or None."""
    found = re.findall(r"\\boxed\{(\d+)\}", step)
    return int(found[-1]) if found else None


def is_final_step(step: str) -> bool:
    """Whether a step holds a final ``\\boxed{}`` answer."""
    return "\\boxed{" in step
