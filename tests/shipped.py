"""What the shipped testbed artifacts are, read from them, so tests pin no numbers of one release."""

from __future__ import annotations

import json

from stepgraph.testbed import MODELS_DIR


def shipped_parameters(tier: str) -> int:
    """The parameter count of a shipped tier (``draft``, ``mid``, ``target``), as its ``training.json`` records it."""
    return int(json.loads((MODELS_DIR / tier / "training.json").read_text())["parameters"])
