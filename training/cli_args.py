"""Turn a hyperparameter dataclass (one docstring under each field) into argparse options."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import math
import textwrap
from collections.abc import Callable
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each annotated field of a dataclass, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, following in itertools.pairwise(body):
        is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if is_field and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())  # type: ignore[union-attr]
    return docs


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per field, typed from its default, its docstring as help."""
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{docs.get(field.name, '')} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            kind: Any = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=default, help=help_text)


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**values)


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
