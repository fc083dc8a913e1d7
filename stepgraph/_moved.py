"""Old module paths of earlier releases, still importable with a DeprecationWarning.

``install({"stepgraph.nodes": "stepgraph.graph.nodes", ...})`` binds each old name (and any module
below it: ``stepgraph.gates.simple`` when ``stepgraph.gates`` moved) to the moved module itself, one
module object rather than a copy, so patches and ``isinstance`` checks see the same thing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new}; the old path will be removed", DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name

    def get_code(self, fullname: str) -> CodeType | None:
        # `python -m <old path>` runs the moved module's code as __main__.
        spec = importlib.util.find_spec(self.new)
        assert spec is not None and isinstance(spec.loader, importlib.abc.InspectLoader)
        return spec.loader.get_code(self.new)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, moved: dict[str, str]) -> None:
        self.moved = moved

    def new_name(self, fullname: str) -> str | None:
        for old, new in self.moved.items():
            if fullname == old or fullname.startswith(old + "."):
                return new + fullname[len(old):]
        return None

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = self.new_name(fullname)
        if new is None:
            return None
        moved = importlib.util.find_spec(new)
        origin = moved.origin if moved else None  # runpy sets sys.argv[0] from it
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new), origin=origin)


def install(moved: dict[str, str]) -> None:
    """Route imports of each old module path in ``moved`` to its new one (once per table)."""
    if not any(isinstance(f, _AliasFinder) and f.moved == moved for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder(moved))
