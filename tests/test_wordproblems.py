"""Task v2 (stepgraph.testbed.wordproblems): the generator, its splits and the exact step verifier."""

from __future__ import annotations

import json
import re

import pytest

from stepgraph.testbed import wordproblems as wp
from stepgraph.testbed.wordlists import GROUPS, NAMES, NOUNS

SPLITS = ("train", "calibration", "test", "heldout")


@pytest.fixture(scope="module")
def train_problems() -> list[wp.WordProblem]:
    return wp.generate("train", 2500, seed=0)


def _equation(step: str) -> tuple[int, str, int, int]:
    match = re.search(r"\$?(\d+) (\S) \$?(\d+) = \$?(\d+)", step)
    assert match, step
    return int(match[1]), match[2], int(match[3]), int(match[4])


@pytest.mark.parametrize("split", SPLITS)
def test_every_gold_step_and_answer_verifies(split):
    for problem in wp.generate(split, 600, seed=1):
        assert problem.steps[-1] == f"\\boxed{{{problem.answer}}}"
        assert 1 <= len(problem.derived) == len(problem.steps) - 1 <= 6
        for i, step in enumerate(problem.steps):
            assert wp.verify_step(problem, problem.steps[:i], step), (problem.question, problem.steps, i)


def test_generate_is_reproducible_and_splits_are_disjoint():
    lists = {split: wp.generate(split, 200, seed=4) for split in SPLITS}
    assert [p.question for p in wp.generate("test", 200, seed=4)] == [p.question for p in lists["test"]]
    assert [p.question for p in wp.generate("test", 200, seed=5)] != [p.question for p in lists["test"]]
    questions = {split: {p.question for p in problems} for split, problems in lists.items()}
    for split, problems in lists.items():
        assert len(questions[split]) == 200
        assert all(wp.split_of(p) == split for p in problems)
        for other in SPLITS:
            if other != split:
                assert not questions[split] & questions[other]
    with pytest.raises(ValueError, match="heldout"):
        wp.generate("validation", 1)  # type: ignore[arg-type]


def _form_regex(template: str) -> re.Pattern:
    """A held-out template as a regex over rendered sentences (its fields and verb forms abstracted)."""
    parts = re.split(r"(\{[^}]+\}|\[[^\]]+\])", template)
    out = []
    for part in parts:
        if part.startswith("{"):
            out.append(r"[^.?]+?")
        elif part.startswith("["):
            verb = part[1:-1]
            out.append(f"(?:{re.escape(verb)}|{re.escape(wp._conjugate(verb))})")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out), re.IGNORECASE)


def test_heldout_forms_never_occur_outside_the_heldout_split(train_problems):
    held = [template for forms in wp.FORMS.values() for form_id, template, _ in forms if form_id in wp.HELDOUT_FORMS]
    assert len(held) >= 20
    reserved = re.compile("|".join(f"(?:{_form_regex(t).pattern})" for t in held), re.IGNORECASE)
    for split in ("train", "calibration", "test"):
        problems = train_problems if split == "train" else wp.generate(split, 500, seed=0)
        assert not any(wp.HELDOUT_FORMS.intersection(p.forms) for p in problems)
        sentences = {s.strip() for p in problems for s in _sentences(p.question)}
        assert not [s for s in sentences if reserved.fullmatch(s)], split
    # Every reserved form is actually used by the held-out split.
    heldout = wp.generate("heldout", 1000, seed=0)
    assert all(wp.HELDOUT_FORMS.intersection(p.forms) for p in heldout)
    assert any(reserved.fullmatch(s.strip()) for p in heldout for s in _sentences(p.question))  # the check can fire
    used = {f for p in heldout for f in p.forms}
    assert wp.HELDOUT_FORMS <= used



def test_heldout_forms_are_new_shapes_of_words_training_uses(train_problems):
    """A held-out form recombines training's words in a new sentence shape: a model trained from
    scratch cannot read a word it never saw, so an unseen word would measure vocabulary, not phrasing."""
    trained = {w.lower() for p in train_problems for text in (p.question, *p.steps) for w in re.findall(r"[A-Za-z]+", text)}
    for forms in wp.FORMS.values():
        for form_id, template, _ in forms:
            if form_id in wp.HELDOUT_FORMS:
                words = re.findall(r"[A-Za-z]+", re.sub(r"\{[^}]+\}", " ", template))  # verbs as written (he / she)
                assert not {w.lower() for w in words} - trained, (form_id, template)

_NOUN_WORDS = sorted({w for nouns in NOUNS.values() for pair in nouns for w in pair} | set(GROUPS), key=len, reverse=True)
_NAME_WORDS = {name for name, _ in NAMES}


def _shape(sentence: str) -> str:
    """A sentence with names, pronouns, nouns and numbers abstracted."""
    text = re.sub(r"\d+", "N", sentence)
    text = re.sub(r"\b(" + "|".join(map(re.escape, _NOUN_WORDS)) + r")\b", "NOUN", text)
    text = re.sub(r"\b(She|He|she|he)\b", "PRON", text)
    return " ".join("NAME" if word in _NAME_WORDS else word for word in text.split(" "))


_SHAPES: dict[int, list[list[str]]] = {}


def _train_shapes(problems: list[wp.WordProblem]) -> list[list[str]]:
    if id(problems) not in _SHAPES:
        _SHAPES[id(problems)] = [[_shape(s.strip()) for s in _sentences(p.question)] for p in problems]
    return _SHAPES[id(problems)]


def _sentences(question: str) -> list[str]:
    return re.findall(r"[^.?]+[.?]", question)


@pytest.mark.parametrize(
    "example",
    [
        "Tom has 5 pens. He buys 3 more. How many pens does he have?",
        "A box holds 12 eggs. How many eggs are in 5 boxes?",
        "Anna shares 24 candies equally among 4 friends. How many does each get?",
        "Eve has 3 pens. She gets 4 more. She loses 2.",
    ],
)
def test_issue_examples_fall_inside_the_distribution(example, train_problems):
    """Each example's run of sentence forms occurs in a generated train question (names, nouns, numbers abstracted)."""
    want = [_shape(s.strip()) for s in _sentences(example)]
    for shapes in _train_shapes(train_problems):
        if any(shapes[i : i + len(want)] == want for i in range(len(shapes) - len(want) + 1)):
            return
    pytest.fail(f"no generated question has the forms of {example!r}: {want}")


def _find(problems, predicate):
    found = next((p for p in problems if predicate(p)), None)
    assert found is not None
    return found


def test_wrong_steps_are_rejected_and_classified(train_problems):
    # Arithmetic slip: right operands and operation, wrong result.
    p = train_problems[0]
    a, op, b, c = _equation(p.steps[0])
    slip = p.steps[0].replace(f"= {c}", f"= {c + 1}").replace(f"= ${c}", f"= ${c + 1}")
    assert not wp.verify_step(p, [], slip)
    assert wp.classify_step(p, [], slip) == "arithmetic_slip"

    # Wrong operation: a ready quantity's operands, another operation.
    other = {"+": "×", "×": "+", "-": "+", "÷": "×"}[op]
    wrong_op = f"{a} {other} {b} = {wp._apply(wp._OPS_IN_TEXT[other], a, b)}"  # type: ignore[arg-type]
    assert wp.classify_step(p, [], wrong_op) == "wrong_operation"

    # Wrong operand: a distractor's number in place of a given input.
    def distracted(q: wp.WordProblem) -> bool:
        values = {x.value for x in q.quantities if x.role != "distractor"}
        first = q.derived[0]
        return any(x.role == "distractor" and x.value not in values for x in q.quantities) and q.quantity(first.inputs[1]).role == "given"

    p = _find(train_problems, distracted)
    distractor = next(x.value for x in p.quantities if x.role == "distractor")
    first = p.derived[0]
    left = p.quantity(first.inputs[0]).value
    result = wp._apply(first.op, left, distractor)  # type: ignore[arg-type]
    step = f"{left} {wp.SYMBOLS[first.op]} {distractor} = {result}"  # type: ignore[index]
    assert wp.classify_step(p, [], step) == "wrong_operand"

    # Skipped step: the second quantity before the first it depends on.
    def chained(q: wp.WordProblem) -> bool:
        first, second = q.derived[:2] if len(q.derived) >= 2 else (None, None)
        givens = {x.value for x in q.quantities if x.role != "derived"}
        return first is not None and first.key in second.inputs and first.value not in givens  # type: ignore[union-attr]

    p = _find(train_problems, chained)
    assert wp.classify_step(p, [], p.steps[1]) == "skipped_step"
    assert wp.classify_step(p, [], f"\\boxed{{{p.answer}}}") == "skipped_step"  # answered before computing it

    # Extra step: a quantity computed again, or anything after the boxed answer.
    p = _find(train_problems, lambda q: len(q.derived) >= 2)
    assert wp.classify_step(p, p.steps[:1], p.steps[0]) == "extra_step"
    assert wp.classify_step(p, p.steps, "1 + 1 = 2") == "extra_step"

    # Malformed: no equation, a chain, two equations.
    for garbage in ["", "I think the answer is big.", "2 + 3 + 4 = 9", "2 + 3 = 5 and 5 + 1 = 6", "\\boxed{}"]:
        assert wp.classify_step(p, [], garbage) == "malformed"


def test_accepts_equivalent_forms_and_judges_locally(train_problems):
    p = train_problems[0]
    a, op, b, c = _equation(p.steps[0])
    if op in ("+", "×"):
        assert wp.verify_step(p, [], f"{b} {op} {a} = {c}")  # commutative order
    else:
        assert not wp.verify_step(p, [], f"{b} {op} {a} = {c}")
    spellings = {"+": ["+"], "-": ["-", "−"], "×": ["×", "*", "x"], "÷": ["÷", "/"]}[op]
    for symbol in spellings:
        assert wp.verify_step(p, [], f"So {a} {symbol} {b} = {c} in all.")
        assert wp.verify_step(p, [], f"{a}{symbol}{b}={c}") or symbol == "x"

    # A prior slip is built on as written: the next step using the wrong value is right.
    p = _find(train_problems, lambda q: len(q.derived) >= 2 and q.derived[0].key in q.derived[1].inputs)
    a, op, b, c = _equation(p.steps[0])
    slipped = f"{a} {op} {b} = {c + 10}"
    second = p.derived[1]
    values = [c + 10 if key == p.derived[0].key else p.quantity(key).value for key in second.inputs]
    symbol = wp.SYMBOLS[second.op]  # type: ignore[index]
    result = wp._apply(second.op, *values)  # type: ignore[arg-type]
    if result is not None and result >= 0:
        assert wp.verify_step(p, [slipped], f"{values[0]} {symbol} {values[1]} = {result}")
    assert not wp.verify_step(p, [slipped], p.steps[1])

    # Independent quantities may come in any order.
    def two_ready(q: wp.WordProblem) -> bool:
        known = {x.key: x.value for x in q.quantities if x.role != "derived"}
        return len(wp._ready(q, known)) >= 2

    p = _find(train_problems, two_ready)
    known = {x.key: x.value for x in p.quantities if x.role != "derived"}
    later = wp._ready(p, known)[1]
    x, y = (p.quantity(k).value for k in later.inputs)
    assert wp.verify_step(p, [], f"{x} {wp.SYMBOLS[later.op]} {y} = {later.value}")  # type: ignore[index]
    # The final answer must be the asked quantity's value as written.
    p = train_problems[0]
    assert not wp.verify_step(p, p.steps[:-1], f"\\boxed{{{p.answer + 1}}}")
    assert wp.classify_step(p, p.steps[:-1], f"\\boxed{{{p.answer + 1}}}") == "arithmetic_slip"


def test_vocabulary_is_broad():
    assert len(NAMES) >= 250
    assert {pronoun for _, pronoun in NAMES} == {"she", "he", "they"}
    assert len({pair for nouns in NOUNS.values() for pair in nouns}) >= 120
    assert sum(len(forms) for forms in wp.FORMS.values()) >= 100
    assert len(wp.FORMS["gain"]) >= 8 and len(wp.FORMS["lose"]) >= 8


def test_a_step_said_of_the_wrong_person_or_noun_is_a_wrong_quantity():
    problems = wp.generate("test", 400, seed=2)
    # "Ann has 51 balloons, so Walter has 51 - 41 = 10 balloons.": Walter's amount, not Ann's.
    p = _find(problems, lambda q: ", so " in q.steps[-2])
    i = len(p.steps) - 2
    step = p.steps[i]
    owner = re.search(r"so (\w+) has", step)[1]  # type: ignore[index]
    other = next(n for n in wp._people(p.question) if n != owner and n in step)
    swapped = step.replace(f"so {owner} has", f"so {other} has")
    assert wp.classify_step(p, p.steps[:i], swapped) == "wrong_quantity"
    noun = _equation_noun(step)
    wrong_noun = "kites" if noun != "kites" else "pens"
    assert wp.classify_step(p, p.steps[:i], step.replace(f" {noun}.", f" {wrong_noun}.")) == "wrong_quantity"
    assert wp.classify_step(p, p.steps[:i], step.replace(f" {noun}.", f" {noun[:-1]}.")) is None  # singular: same noun
    # Not naming the person or the noun is not judged; a wrong result is still a slip first.
    a, op, b, c = _equation(step)
    assert wp.verify_step(p, p.steps[:i], f"So {a} {op} {b} = {c}.")
    assert wp.verify_step(p, p.steps[:i], f"{other} has {a}, so she has {a} {op} {b} = {c} {noun}.")  # a pronoun is not checked
    assert wp.classify_step(p, p.steps[:i], swapped.replace(f"= {c}", f"= {c + 1}")) == "arithmetic_slip"

    # A difference between two people may be said of either ("7 fewer than"), so only the noun is checked.
    p = _find(problems, lambda q: " more " in q.steps[-2] and " than " in q.steps[-2])
    i = len(p.steps) - 2
    first, second = re.match(r"(\w+) has .* than (\w+)\.", p.steps[i]).groups()  # type: ignore[union-attr]
    a, op, b, c = _equation(p.steps[i])
    assert wp.verify_step(p, p.steps[:i], f"{second} has {a} {op} {b} = {c} fewer than {first}.")

    # Another person of the question (the compared one, or a distractor's) is not the owner of A's amount.
    p = _find(problems, lambda q: any(x.role == "distractor" for x in q.quantities) and len(wp._people(q.question)) >= 2
              and q.steps[0].startswith(tuple(wp._people(q.question))))
    owner = p.steps[0].split()[0]
    stranger = next(n for n in wp._people(p.question) if n != owner)
    assert wp.classify_step(p, [], p.steps[0].replace(owner, stranger, 1)) == "wrong_quantity"


def test_a_result_called_a_difference_that_is_not_one_is_a_wrong_quantity():
    # "Marco has 21 muffins. He uses 5. ... How many more muffins does Marco have than Yusuf?": the draft wrote
    # "Paul has 21 - 5 = 16 more muffins than Nate." The number is Marco's remainder, the words call it the answer,
    # and the next tier boxed 16.
    problems = wp.generate("test", 400, seed=2)
    p = _find(problems, lambda q: re.search(r"= \$?\d+ \w+", q.steps[0]) and " than " not in q.steps[0] and " than " in q.steps[-2])
    a, op, b, c = _equation(p.steps[0])
    noun = _equation_noun(p.steps[0])
    called = f"So {a} {op} {b} = {c} more {noun} than before."
    assert wp.classify_step(p, [], called) == "wrong_quantity"
    assert not wp.verify_step(p, [], called)
    assert wp.verify_step(p, [], f"So {a} {op} {b} = {c} {noun}.")  # the same step, not called a difference
    # The gold difference step still verifies, said of either person.
    i = len(p.steps) - 2
    assert wp.verify_step(p, p.steps[:i], p.steps[i])


def test_a_result_said_to_fill_containers_the_problem_does_not_fill_is_a_wrong_quantity():
    # "For 9 hours, Lucy sews 2 buttons each hour. ...": the draft wrote "2 cases of 9 hold 2 × 9 = 18 buttons.", and
    # the target then added the 2 to the 18 as if they were more buttons.
    problems = wp.generate("test", 400, seed=2)
    p = _find(problems, lambda q: " hold " not in q.steps[0] and q.steps[0].count("=") == 1 and " than " not in q.steps[0])
    a, op, b, c = _equation(p.steps[0])
    noun = _equation_noun(p.steps[0])
    assert wp.classify_step(p, [], f"{a} cases of {b} hold {a} {op} {b} = {c} {noun}.") == "wrong_quantity"
    # Where the reference step fills containers, the same ones (singular or plural) are right, others are not.
    p = _find(problems, lambda q: re.match(r"\d+ (boxes|bags|packs|jars|crates) of \d+ hold", q.steps[0]))
    containers = p.steps[0].split()[1]
    other = "baskets" if containers != "baskets" else "boxes"
    assert wp.verify_step(p, [], p.steps[0])
    assert wp.classify_step(p, [], p.steps[0].replace(containers, other, 1)) == "wrong_quantity"


def _equation_noun(step: str) -> str:
    match = re.search(r"= \$?\d+ (\w+)", step)
    assert match, step
    return match[1]


@pytest.mark.parametrize("seed", [21, 22])
def test_no_reference_step_is_rejected_by_the_naming_check(seed):
    for split in SPLITS:
        for problem in wp.generate(split, 250, seed=seed):  # 2,000 reference solutions over both seeds
            for i, step in enumerate(problem.steps):
                assert wp.classify_step(problem, problem.steps[:i], step) is None, (problem.question, problem.steps, i)


def test_the_generator_still_draws_what_the_shipped_tiers_were_trained_on():
    """A change to the generator (or to how it consumes its RNG) changes every split; the shipped tiers record the stream."""
    from stepgraph.training.testbed_models import data_fingerprint

    from stepgraph.testbed import TIER_DIRS

    recorded = {json.loads((path / "training.json").read_text())["data_fingerprint"] for path in TIER_DIRS[3]}
    assert recorded == {data_fingerprint("v2", 0)}
