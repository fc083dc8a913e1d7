"""argparse ``type=`` callables that check an option's range, so a bad value is a one-line error naming the option."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def in_range(kind: type, low: float | None = None, high: float | None = None, *,
             exclusive: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=``: a finite ``kind`` (int or float) within [low, high] ((low, high) if ``exclusive``).

    argparse turns its error into one line naming the option, e.g.
    ``argument --problems: must be an integer >= 1, got '0'``.
    """
    word = "an integer" if kind is int else "a finite number"
    left, right = ("(", ")") if exclusive else ("[", "]")
    if low is not None and high is not None:
        allowed = f"{word} in {left}{low}, {high}{right}"
    elif low is not None:
        allowed = f"{word} {'>' if exclusive else '>='} {low}"
    else:
        allowed = word

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        ok = value is not None and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if exclusive else value >= low
        if ok and high is not None:
            ok = value < high if exclusive else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse
