"""Final answers: extract the last ``\\boxed{}`` and judge it with math-verify."""

from __future__ import annotations

import logging
import threading

TIMEOUT_SECONDS = 5


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), or None.

    Example:
        >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} it is")
        '\\\\frac{1}{2}'
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i].strip()
            depth -= 1
    return None  # unbalanced: the answer was cut off


def is_correct(predicted: str | None, reference: str) -> bool:
    """Whether a predicted final answer equals the reference, mathematically (math-verify).

    A comparison that takes longer than ``TIMEOUT_SECONDS`` counts as wrong.
    """
    if predicted is None or not predicted.strip():
        return False
    # math-verify's own timeout uses SIGALRM, which only the main thread may set, so judging
    # from collection workers or async executors would run without one. The comparison runs in
    # a daemon thread instead, on every thread alike, and is abandoned when it overruns.
    from math_verify import parse, verify  # sympy and ANTLR take a second to import: only when judging

    _silence_timeout_notice()
    verdict: list[bool] = []

    def judge() -> None:
        gold = parse(f"${reference}$", parsing_timeout=None) or parse(reference, parsing_timeout=None)
        guess = parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
        verdict.append(bool(gold and guess and verify(gold, guess, timeout_seconds=None)))

    worker = threading.Thread(target=judge, daemon=True)
    worker.start()
    worker.join(TIMEOUT_SECONDS)
    return bool(verdict and verdict[0])


class _TimeoutNoticeFilter(logging.Filter):
    """Drops math-verify's "Timeout is disabled" notice: ``is_correct`` enforces the timeout itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_TIMEOUT_NOTICE = _TimeoutNoticeFilter()


def _silence_timeout_notice() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_TIMEOUT_NOTICE)  # adding the same filter twice is a no-op
