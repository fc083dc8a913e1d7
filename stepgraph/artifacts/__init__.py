"""The artifacts layer: learned files as a JSON manifest + checksummed safetensors, never a pickle.

``manifest`` (the one reader and writer every kind shares), ``policy`` (the routing policy's
network and artifact) and ``tiers`` (which tiers an artifact was made for). It imports models and
features only.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    # `from stepgraph.artifacts import read_manifest` of earlier releases: the reader now lives in .manifest
    manifest = importlib.import_module("stepgraph.artifacts.manifest")
    if name.startswith("__") or not hasattr(manifest, name):
        raise AttributeError(f"module 'stepgraph.artifacts' has no attribute {name!r}")
    warnings.warn(f"stepgraph.artifacts.{name} moved to stepgraph.artifacts.manifest.{name}", DeprecationWarning, stacklevel=2)
    return getattr(manifest, name)
