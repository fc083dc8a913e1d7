"""Final answers: extract the last ``\\boxed{}`` and judge it with math-verify."""

from __future__ import annotations

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
    """Whether a predicted final answer equals the reference, mathematically (math-verify)."""
    if predicted is None or not predicted.strip():
        return False
    from math_verify import parse, verify  # imported here: it takes seconds, and the graph only needs extract_boxed

    # math-verify's timeout uses SIGALRM, which only the main thread may set; elsewhere
    # (collection workers, async executors) it runs without one.
    timeout = TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"${reference}$", parsing_timeout=timeout) or parse(reference, parsing_timeout=timeout)
    guess = parse(f"\\boxed{{{predicted}}}", parsing_timeout=timeout)
    return bool(gold and guess and verify(gold, guess, timeout_seconds=timeout))
