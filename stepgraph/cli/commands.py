"""The offline commands and the ``stepgraph.cli`` module that adds each: a command line loads only its own module."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterable

OFFLINE_COMMANDS = {"training": ("collect", "train", "refine", "calibrate", "evaluate", "bench"), "radar": ("radar",),
                    "studies": ("reobserve", "signals", "policy-check", "bench-allocator", "taxonomy"),
                    "testbed_models": ("testbed-models",), "regenerate": ("regenerate",)}
"""The offline commands by the ``stepgraph.cli`` module that adds them."""


def is_offline(command: str) -> bool:
    """Whether ``command`` is one of ``OFFLINE_COMMANDS``."""
    return any(command in commands for commands in OFFLINE_COMMANDS.values())


def add_offline_commands(sub: argparse._SubParsersAction, names: Iterable[str]) -> None:
    """Add to ``sub`` these offline commands, with the others of their modules, unless it has them already."""
    wanted = set(names) - set(sub.choices)
    for module, commands in OFFLINE_COMMANDS.items():
        if wanted & set(commands):
            added = importlib.import_module(f"stepgraph.cli.{module}")
            (getattr(added, "add_commands", None) or added.add_command)(sub)
