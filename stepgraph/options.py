"""Deprecated: ``in_range`` moved to ``stepgraph.cli.options`` (argparse lives in the CLI package only)."""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "in_range":
        warnings.warn("stepgraph.options.in_range moved to stepgraph.cli.options.in_range.", DeprecationWarning, stacklevel=2)
        from stepgraph.cli.options import in_range

        return in_range
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
