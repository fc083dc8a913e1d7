"""Turn a hyperparameter dataclass (one docstring under each field) into argparse options."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import typing
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


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                          variant: tuple[type, str] | None = None) -> None:
    """One ``--field-name`` option per field, typed from its default (a tuple's items from its annotation), its
    docstring as help.

    ``variant`` (a subclass and its name): where its default differs, the option defaults to None
    so that ``dataclass_from_args`` leaves each class its own default, and the help names both.
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)  # a tuple field's element type, also where its default is empty
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        doc = docs.get(field.name, "").replace("%", "%%")  # argparse %-formats help
        help_text = f"{doc} (default: {default})"
        if variant is not None and getattr(variant[0], field.name, default) != default:
            help_text = f"{doc} (default: {default}; {variant[1]}: {getattr(variant[0], field.name)})"
            parser.add_argument(flag, type=type(default), default=None, help=help_text)
            continue
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif isinstance(default, tuple):  # one value per word, typed as annotated (type=tuple splits characters)
            element = typing.get_args(hints[field.name])[0]
            parser.add_argument(flag, nargs="*", type=element, default=default, metavar="X",
                                help=f"{doc} (default: {' '.join(map(str, default)) or 'none'})")
        else:
            kind: Any = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=default, help=help_text)


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """``cls`` from the options of the same names; an option left at None keeps the field's default."""
    values = {f.name: tuple(value) if isinstance(f.default, tuple) else value for f in dataclasses.fields(cls)
              if (value := getattr(args, f.name, None)) is not None}
    return cls(**values)
