"""``RouterContext``'s fields for the integrations' own settings (chat model, tool).

RouterContext is the one source of each run setting's type, default and description: the chat
model's fields and the tool's defaults are read from it, so a default changed there changes
everywhere. RouterContext may be a dataclass or a pydantic model; both are read.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any

from pydantic import Field
from pydantic.fields import FieldInfo

from stepgraph.context import RouterContext


def context_fields() -> dict[str, tuple[Any, FieldInfo]]:
    """RouterContext's fields as ``{name: (type, pydantic FieldInfo)}``, in declaration order."""
    if hasattr(RouterContext, "model_fields"):  # a pydantic model: its FieldInfos carry everything
        return {name: (info.annotation, copy.copy(info)) for name, info in RouterContext.model_fields.items()}
    hints = typing.get_type_hints(RouterContext)
    fields: dict[str, tuple[Any, FieldInfo]] = {}
    for f in dataclasses.fields(RouterContext):  # type: ignore[arg-type]
        description = f.metadata.get("description")
        if f.default is not dataclasses.MISSING:
            info = Field(default=f.default, description=description)
        else:
            info = Field(default_factory=typing.cast(typing.Callable[[], Any], f.default_factory), description=description)
        fields[f.name] = (hints[f.name], info)
    return fields


def context_default(name: str) -> Any:
    """The default of the RouterContext field ``name``."""
    info = context_fields()[name][1]
    return info.get_default(call_default_factory=True)


CONTEXT_FIELDS = tuple(context_fields())
"""The names of RouterContext's fields."""
