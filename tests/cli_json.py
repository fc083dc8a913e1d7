"""Run the ``stepgraph`` CLI in process and read the JSON it prints."""

import json
from typing import Any

from stepgraph.cli import main


def run(capsys: Any, *argv: str) -> dict:
    """``stepgraph *argv``, which must exit 0; its stdout as JSON."""
    assert main(list(argv)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)
