"""Confidence features of a drafted step: the observation o_t the gates see.

"Math tokens" are the generated tokens that carry the computation: after stripping
whitespace (and a leading byte-level marker such as Qwen's "Ġ"), a token is a math token when
it is non-empty and either starts with a backslash (a LaTeX command such as ``\\boxed{`` or
``\\frac``) or consists only of digits and the symbols ``+ - * / = ^ ( ) [ ] { } . , < >``.
Words, punctuation-only prose and the step break are not. STEER's observation is that the
model's confidence on exactly these tokens separates right from wrong steps; when a step has no
math token at all, every token counts.

Four schemas exist. ``CONFIDENCE_SCHEMA`` (v1) is what policies trained before the richer
observations read; ``FEATURE_SCHEMA_V2`` adds the sampled tokens' own log-probabilities,
per-token summaries of the top-k log-probabilities, a grounding check of the step's operands
against the question and the earlier steps, and the previous step's outcome (the paper's
stepwise dependency); ``FEATURE_SCHEMA_V3`` adds how many of the question's numbers the answer
has not used yet (a boxed answer that leaves some unused has often skipped a step);
``FEATURE_SCHEMA`` (v4, what new policies are trained on) adds the same sampled-token statistics
over the *prose* tokens (every token that is neither a math token nor whitespace): a wrong
quantity or a wrong person is a word the model was unsure of, which the math tokens do not see.
``observe`` computes v4, a superset of the others, so every kind of policy reads its own features
from the same observation.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
import re
from collections.abc import Mapping, Sequence

from stepgraph.models.base import StepOutput

MATH_CHARS = frozenset("0123456789+-*/=^()[]{}.,<>")


def _core(token: str) -> str:
    """The token without whitespace and the byte-level space / newline markers (Qwen's "Ġ", "Ċ")."""
    return token.replace("Ġ", "").replace("Ċ", "").strip()


def is_math_token(token: str) -> bool:
    """Whether a generated token is a math token (see the module docstring)."""
    core = _core(token)
    if not core:
        return False
    return core.startswith("\\") or all(c in MATH_CHARS for c in core)


def _math_positions(tokens: Sequence[str]) -> list[int]:
    positions = [i for i, tok in enumerate(tokens) if is_math_token(tok)]
    return positions or list(range(len(tokens)))


def _word_positions(tokens: Sequence[str]) -> list[int]:
    """The prose tokens: neither math tokens nor whitespace (the step break). Where the math tokens carry the
    computation, these carry what it is about (which quantity, who has it, what is left)."""
    return [i for i, tok in enumerate(tokens) if _core(tok) and not is_math_token(tok)]


def logit_confidence(step: StepOutput, math_positions: Sequence[int] | None = None) -> float | None:
    """Mean of the per-token max raw logit over math tokens (STEER's score); None without logits.

    ``math_positions`` (every feature of one step takes it) saves finding the math tokens again.
    """
    if not step.max_logits:
        return None
    math_positions = _math_positions(step.tokens) if math_positions is None else math_positions
    positions = [i for i in math_positions if i < len(step.max_logits)]
    return sum(step.max_logits[i] for i in positions) / len(positions) if positions else None


def api_confidence(step: StepOutput, math_positions: Sequence[int] | None = None) -> float | None:
    """Minimum top-1 probability over math tokens, from top-k logprobs; None without logprobs."""
    math_positions = _math_positions(step.tokens) if math_positions is None else math_positions
    positions = [i for i in math_positions if i < len(step.top_logprobs) and step.top_logprobs[i]]
    if not positions:
        return None
    return min(math.exp(max(lp for _, lp in step.top_logprobs[i])) for i in positions)


Observation = dict[str, float | None]


class FeatureSchema:
    """A named, versioned list of features; a policy file records the schema it was trained on."""

    def __init__(self, name: str, version: int, names: Sequence[str]) -> None:
        self.name, self.version, self.names = name, version, tuple(names)

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "names": list(self.names)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSchema) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"FeatureSchema({self.name!r}, v{self.version}, {list(self.names)})"

    def vector(self, observation: Observation) -> list[float]:
        """The observation as numbers in schema order; a missing feature becomes NaN."""
        return [float("nan") if observation.get(n) is None else float(observation[n]) for n in self.names]  # type: ignore[arg-type]


CONFIDENCE_SCHEMA = FeatureSchema(
    "stepgraph.confidence",
    1,
    [
        "logit_confidence",  # mean max raw logit over math tokens (STEER)
        "api_confidence",  # min top-1 probability over math tokens (top-k logprobs)
        "step_index",  # 0 for the first step
        "step_tokens",  # generated tokens in the draft step
        "is_final",  # 1 if the draft holds \boxed{} or ended the answer
        "escalations",  # steps escalated so far in this answer
        "difficulty",  # an optional difficulty estimate in [0, 1]; None when unknown
    ],
)


FEATURE_SCHEMA_V2 = FeatureSchema(
    "stepgraph.confidence",
    2,
    [
        *CONFIDENCE_SCHEMA.names,
        "sampled_logprob_sum",  # sum of the sampled tokens' log-probabilities over math tokens
        "sampled_logprob_min",  # the least likely sampled math token's log-probability
        "margin_min",  # smallest top-1 minus top-2 log-probability over math tokens
        "entropy_max",  # largest entropy (nats) of the top-k distribution over math tokens
        "result_digit_min",  # least likely sampled digit after the last "="
        "ungrounded_operands",  # operands found neither in the question nor in earlier steps
        "arithmetic_error",  # 1 if an "expression = number" in the step does not hold, 0 if all do; None if none
        "previous_escalated",  # 1 if the previous step was escalated, 0 if not; None on the first step
        "previous_sampled_logprob_min",  # the previous step's sampled_logprob_min
    ],
)


FEATURE_SCHEMA_V3 = FeatureSchema(
    "stepgraph.confidence",
    3,
    [
        *FEATURE_SCHEMA_V2.names,
        "unused_question_numbers",  # the question's numbers that neither the earlier steps nor this one contain
    ],
)

FEATURE_SCHEMA = FeatureSchema(
    "stepgraph.confidence",
    4,
    [
        *FEATURE_SCHEMA_V3.names,
        "word_sampled_logprob_sum",  # sum of the sampled tokens' log-probabilities over prose (non-math) tokens
        "word_sampled_logprob_min",  # the least likely sampled prose token's log-probability
        "word_margin_min",  # smallest top-1 minus top-2 log-probability over prose tokens
    ],
)

LOGPROB_FEATURES = ("api_confidence", "sampled_logprob_sum", "sampled_logprob_min", "margin_min", "entropy_max",
                    "result_digit_min", "previous_sampled_logprob_min", "word_sampled_logprob_sum",
                    "word_sampled_logprob_min", "word_margin_min")
"""The features read from log-probabilities: a raw-logits backend (vLLM's ``logprobs_mode="raw_logits"``) has none."""

SITUATIONAL = frozenset({"result_digit_min", "arithmetic_error", "previous_escalated", "previous_sampled_logprob_min",
                         "word_sampled_logprob_sum", "word_sampled_logprob_min", "word_margin_min"})
"""Features that are None by the step's nature (no "=", the first step, no prose token), not because a backend lacks them."""

SCHEMAS = {(s.name, s.version): s for s in (CONFIDENCE_SCHEMA, FEATURE_SCHEMA_V2, FEATURE_SCHEMA_V3, FEATURE_SCHEMA)}
"""Every schema this stepgraph can compute, by (name, version): artifacts of any of them load."""


def known_schema(name: str, version: int, names: Sequence[str]) -> FeatureSchema | None:
    """The known schema with this name, version and feature list, else None."""
    schema = SCHEMAS.get((name, version))
    return schema if schema is not None and list(schema.names) == list(names) else None


def _sampled(step: StepOutput) -> list[float] | None:
    lps = step.token_logprobs
    return lps if lps and len(lps) == len(step.tokens) else None


def sampled_logprobs(step: StepOutput, math_positions: Sequence[int] | None = None) -> tuple[float | None, float | None]:
    """(sum, min) of the sampled tokens' log-probabilities over math tokens; (None, None) without them."""
    lps = _sampled(step)
    if lps is None:
        return None, None
    values = [lps[i] for i in (_math_positions(step.tokens) if math_positions is None else math_positions)]
    return (sum(values), min(values)) if values else (None, None)


def top_k_summaries(step: StepOutput, math_positions: Sequence[int] | None = None) -> tuple[float | None, float | None]:
    """(smallest top-1 − top-2 log-probability margin, largest entropy) over math tokens.

    The entropy is of the top-k probabilities with the rest of the mass as one more outcome, a
    lower bound of the full distribution's. (None, None) without top-k log-probabilities.
    """
    margins, entropies = [], []
    for i in _math_positions(step.tokens) if math_positions is None else math_positions:
        if i >= len(step.top_logprobs) or not step.top_logprobs[i]:
            continue
        lps = sorted((lp for _, lp in step.top_logprobs[i]), reverse=True)
        margins.append(lps[0] - lps[1] if len(lps) > 1 else math.inf)
        probs = [math.exp(lp) for lp in lps]
        rest = max(0.0, 1.0 - sum(probs))
        entropies.append(-sum(p * math.log(p) for p in [*probs, rest] if p > 0))
    if not margins:
        return None, None
    margin = min(margins)
    return (margin if math.isfinite(margin) else None), max(entropies)


def result_digit_min(step: StepOutput) -> float | None:
    """The least likely sampled digit token after the step's last "=" (the result it wrote).

    None without sampled log-probabilities, or when no digit follows an "=".
    """
    lps = _sampled(step)
    if lps is None:
        return None
    last_eq = max((i for i, tok in enumerate(step.tokens) if "=" in tok), default=None)
    if last_eq is None:
        return None
    digits = [lps[i] for i in range(last_eq, len(step.tokens)) if any(c.isdigit() for c in step.tokens[i])]
    return min(digits) if digits else None


TEXT_LIMIT = 4096
"""The most characters of a step (and of the question, and of each earlier step) the text
features read: the first ``TEXT_LIMIT``, cut at a whitespace so no number is split. A normal step
is a few hundred characters; the bound keeps observing a runaway step cheap (issue 26)."""


TOKEN_LIMIT = 4096
"""The most generated tokens whose statistics the token features read (the first ones): the
default operator limit on a step's tokens (``RouterLimits.max_step_tokens``), so a step within it
is read whole."""


def _bounded_step(step: StepOutput) -> StepOutput:
    """``step`` with its per-token statistics cut to the first ``TOKEN_LIMIT`` tokens."""
    if len(step.tokens) <= TOKEN_LIMIT:
        return step
    return dataclasses.replace(
        step, tokens=step.tokens[:TOKEN_LIMIT], top_logprobs=step.top_logprobs[:TOKEN_LIMIT],
        max_logits=None if step.max_logits is None else step.max_logits[:TOKEN_LIMIT],
        token_logprobs=None if step.token_logprobs is None else step.token_logprobs[:TOKEN_LIMIT])


def bounded(text: str) -> str:
    """``text`` cut to its first ``TEXT_LIMIT`` characters, at the last whitespace before the limit."""
    if len(text) <= TEXT_LIMIT:
        return text
    head = text[:TEXT_LIMIT]
    cut = max(head.rfind(c) for c in " \n\t")
    return head[:cut] if cut > 0 else head


# A number as written in word problems: thousands separators ("1,200") and decimals ("2.50").
_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")
_CURRENCY = "$€£"
# Quantities a question states in words; a step may use them as operands.
_WORD_NUMBERS = {
    "half": 2, "twice": 2, "double": 2, "doubles": 2, "triple": 3, "triples": 3, "dozen": 12, "percent": 100,
    "quarter": 4, "hundred": 100, "thousand": 1000, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
}
_WORD = re.compile(r"[a-z]+")


def _after_equals(text: str, end: int, floor: int = 0) -> bool:
    """Whether ``text[floor:end]`` ends with "=", whitespace, an optional currency sign, whitespace.

    A walk back from ``end`` (no regex search over the prefix, which was quadratic in the text).
    """
    i = end
    while i > floor and text[i - 1].isspace():
        i -= 1
    if i > floor and text[i - 1] in _CURRENCY:
        i -= 1
        while i > floor and text[i - 1].isspace():
            i -= 1
    return i > floor and text[i - 1] == "="


def numbers(text: str) -> list[tuple[float, bool]]:
    """The numbers in a text (its first ``TEXT_LIMIT`` characters), each with whether it is a result
    (written right after an "=")."""
    text = bounded(text)
    found = []
    previous_end = 0
    for match in _NUMBER.finditer(text):
        value = float(match.group(1).replace(",", "") + (match.group(2) or ""))
        # The walk back stops at the previous number, so each character is walked at most once.
        found.append((value, _after_equals(text, match.start(), previous_end)))
        previous_end = match.end()
    return found


def question_numbers(question: str) -> set[float]:
    """The quantities a question states, in digits or as common number words."""
    known = {value for value, _ in numbers(question)}
    known.update(float(_WORD_NUMBERS[w]) for w in _WORD.findall(bounded(question).lower()) if w in _WORD_NUMBERS)
    return known


def ungrounded_operands(question: str, prior_steps: Sequence[str], step_text: str,
                        known: set[float] | None = None) -> float:
    """How many operands of the step appear neither in the question nor in the earlier steps.

    An operand is a number in the step not written right after an "="; results (after an "=")
    become known for the rest of the step. 1 is always allowed (counting, "each"). Numbers are
    compared by value, so "1,200", "1200" and "1200.0" match. A step without numbers scores 0.
    ``known`` (the question's numbers) may be passed to skip re-reading the question.
    """
    grounded = set(known if known is not None else question_numbers(question)) | {1.0}
    for prior in prior_steps:
        grounded.update(value for value, _ in numbers(prior))
    missing = 0
    for value, is_result in numbers(step_text):
        if not is_result and value not in grounded:
            missing += 1
        grounded.add(value)
    return float(missing)


def unused_question_numbers(question: str, prior_steps: Sequence[str], step_text: str) -> float:
    """How many of the question's numbers (distinct values written in digits) appear neither in the earlier
    steps nor in this one. A final step that leaves some unused has often skipped a step (or the question has a
    distractor): on the testbed it separates the draft's early answers from right ones where the step's own
    confidence does not."""
    unused = {value for value, _ in numbers(question)}
    for text in (*prior_steps, step_text):
        if not unused:
            break
        unused.difference_update(value for value, _ in numbers(text))
    return float(len(unused))


_EXPRESSION_CHARS = frozenset(".,+-*/×x÷()" + _CURRENCY)  # "$68 - $25 = $43": money is arithmetic too


def _in_expression(c: str) -> bool:
    return c.isdecimal() or c.isspace() or c in _EXPRESSION_CHARS


def equations(text: str) -> list[tuple[str, str]]:
    """Each "expression = number" in ``text``: (the run of digits, operators, parentheses and spaces
    before an "=", the number after it). One pass over the text: each "=" walks back over its own
    expression only, where a regex searched from every position (quadratic in a long run of digits)."""
    found = []
    pos = 0
    while (eq := text.find("=", pos)) >= 0:
        start = eq
        while start > pos and _in_expression(text[start - 1]):
            start -= 1
        i = eq + 1
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] in _CURRENCY:
            i += 1
            while i < len(text) and text[i].isspace():
                i += 1
        number_start = i
        if i < len(text) and text[i] == "-":
            i += 1
        digits = i
        while i < len(text) and (text[i].isdecimal() or text[i] in ".,"):
            i += 1
        if start == eq or i == digits:  # no expression before the "=", or no number after it
            pos = eq + 1
            continue
        found.append((text[start:eq], text[number_start:i]))
        pos = i
    return found


_UNWRITTEN = str.maketrans("", "", "," + _CURRENCY)  # thousands separators and currency signs are not arithmetic
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(node: ast.AST) -> float:
    """An arithmetic expression tree of numbers and + - * / (anything else raises ValueError)."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("not arithmetic")


def arithmetic_error(step_text: str) -> float | None:
    """Whether a written calculation is wrong: 1.0 if some "expression = number" does not hold, 0.0 if every
    one does, None when the step writes no checkable calculation (a calculator's check of the draft's text).

    The expression is the run of digits, operators (+ − * / × ÷), parentheses and currency signs before an "=";
    thousands separators and currency signs are dropped ("$68 - $25 = $4" is wrong); a bare number ("x = 5") is
    not a calculation. Reads the step's
    first ``TEXT_LIMIT`` characters.
    """
    checked = False
    for written, result in equations(bounded(step_text)):
        expression = written.translate(_UNWRITTEN).replace("×", "*").replace("x", "*").replace("÷", "/").strip()
        if not any(op in expression.lstrip("-") for op in "+-*/"):
            continue
        try:
            value = _evaluate(ast.parse(expression, mode="eval"))
            stated = float(result.replace(",", "").rstrip("."))
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, MemoryError):
            continue
        checked = True
        if not math.isclose(value, stated, rel_tol=1e-6, abs_tol=1e-6):
            return 1.0
    return 0.0 if checked else None


def observe(step: StepOutput, *, step_index: int, escalations: int, difficulty: float | None = None,
            question: str | None = None, prior_steps: Sequence[str] = (),
            previous: Mapping[str, object] | None = None) -> Observation:
    """The observation o_t of a drafted step, keyed by FEATURE_SCHEMA's names (a superset of v1's to v3's).

    Linear in the step's length, and bounded: the token features read the first ``TOKEN_LIMIT``
    tokens, the text features the first ``TEXT_LIMIT`` characters.

    Args:
        step: the draft.
        step_index: 0 for the first step.
        escalations: steps escalated so far in this answer.
        difficulty: an optional difficulty estimate in [0, 1].
        question: the question; without it ``ungrounded_operands`` and ``unused_question_numbers`` are None.
        prior_steps: the accepted steps before this one.
        previous: the previous step as the graph appended it (its ``observation`` and
            ``escalated``); None on the first step.
    """
    step = _bounded_step(step)
    positions = _math_positions(step.tokens)
    logprob_sum, logprob_min = sampled_logprobs(step, positions)
    margin, entropy = top_k_summaries(step, positions)
    words = _word_positions(step.tokens)
    word_sum, word_min = sampled_logprobs(step, words)
    word_margin, _ = top_k_summaries(step, words)
    previous_observation = previous.get("observation") if previous else None
    previous_min = previous_observation.get("sampled_logprob_min") if isinstance(previous_observation, Mapping) else None
    return {
        "logit_confidence": logit_confidence(step, positions),
        "api_confidence": api_confidence(step, positions),
        "step_index": float(step_index),
        "step_tokens": float(step.generated_tokens),
        "is_final": float("\\boxed{" in step.text or step.finished),
        "escalations": float(escalations),
        "difficulty": difficulty,
        "sampled_logprob_sum": logprob_sum,
        "sampled_logprob_min": logprob_min,
        "margin_min": margin,
        "entropy_max": entropy,
        "result_digit_min": result_digit_min(step),
        "ungrounded_operands": None if question is None else ungrounded_operands(question, prior_steps, step.text),
        "arithmetic_error": arithmetic_error(step.text),
        "previous_escalated": float(bool(previous.get("escalated"))) if previous else None,
        "previous_sampled_logprob_min": float(previous_min) if isinstance(previous_min, (int, float)) else None,
        "unused_question_numbers": None if question is None else unused_question_numbers(question, prior_steps, step.text),
        "word_sampled_logprob_sum": word_sum,
        "word_sampled_logprob_min": word_min,
        "word_margin_min": word_margin,
    }
