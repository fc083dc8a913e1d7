"""The testbed task: generator determinism, split disjointness, the exact step verifier."""

from stepgraph.testbed import task
from stepgraph.testbed.task import Difficulty, Problem


def _problem() -> Problem:
    # Ann has 12 coins. +7, -5, *3 -> 19, 14, 42
    return Problem("q", 12, (("+", 7), ("-", 5), ("*", 3)), ("12+7=19", "19-5=14", "14*3=42", "\\boxed{42}"))


def test_generate_is_deterministic_per_seed():
    a = task.generate("train", 50, seed=3)
    b = task.generate("train", 50, seed=3)
    c = task.generate("train", 50, seed=4)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in a] != [p.question for p in c]


def test_splits_are_disjoint_and_assigned_by_question():
    splits = {name: task.generate(name, 300, seed=0) for name in ("train", "calibration", "test")}
    questions = {name: {p.question for p in ps} for name, ps in splits.items()}
    assert not questions["train"] & questions["test"]
    assert not questions["train"] & questions["calibration"]
    assert not questions["calibration"] & questions["test"]
    assert all(task.split_of(q) == "test" for q in questions["test"])
    # Other seeds of the train split never reach into the test split either.
    assert not {p.question for p in task.generate("train", 300, seed=99)} & questions["test"]


def test_generated_solutions_verify_and_respect_difficulty():
    difficulty = Difficulty(min_ops=3, max_ops=3, start_max=20, operand_max=5, ops=("+", "-"))
    for problem in task.generate("test", 100, seed=1, difficulty=difficulty):
        assert len(problem.operations) == 3
        assert all(op in "+-" and 1 <= k <= 5 for op, k in problem.operations)
        steps = list(problem.steps)
        assert all(task.verify_step(problem, steps[:i], steps[i]) for i in range(len(steps)))
        assert task.boxed_value(steps[-1]) == problem.answer
        assert task.STEP_SEPARATOR.join(steps) == problem.solution


def test_verifier_accepts_hand_made_correct_steps():
    p = _problem()
    assert task.verify_step(p, [], "12+7=19")
    assert task.verify_step(p, ["12+7=19"], " 19-5=14\n")
    assert task.verify_step(p, ["12+7=19", "19-5=14", "14*3=42"], "\\boxed{42}")


def test_verifier_rejects_hand_made_wrong_steps():
    p = _problem()
    assert not task.verify_step(p, [], "12+7=18")  # arithmetic slip
    assert not task.verify_step(p, [], "12+8=20")  # wrong operand, right arithmetic
    assert not task.verify_step(p, [], "12-7=5")  # wrong operation
    assert not task.verify_step(p, ["12+7=19"], "14*3=42")  # skipped a step
    assert not task.verify_step(p, ["12+7=19", "19-5=14"], "\\boxed{14}")  # answer too early
    assert not task.verify_step(p, ["12+7=19", "19-5=14", "14*3=42"], "\\boxed{41}")
    assert not task.verify_step(p, [], "twelve plus seven")
    assert not task.verify_step(p, ["12+7=19", "19-5=14", "14*3=42", "\\boxed{42}"], "42+0=42")


def test_verifier_judges_locally_after_an_earlier_slip():
    p = _problem()
    # The second step continues correctly from the (wrong) value the first step wrote.
    assert task.verify_step(p, ["12+7=20"], "20-5=15")
    assert not task.verify_step(p, ["12+7=20"], "19-5=14")
