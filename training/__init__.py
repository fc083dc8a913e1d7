"""Offline learning of the routing policy: collect traces, train by CPO, calibrate, evaluate, export.

Subpackages: ``data`` (records, datasets, splits, store), ``collection`` (collect, runs,
verifiers, observations, signals), ``learning`` (CPO, allocator, RADAR fit), ``calibration``
(kappa and thresholds) and ``bench``. The flat module paths of earlier releases
(``stepgraph.training.cpo`` ...) still import, with a DeprecationWarning, through one alias table, and so do
``commands`` and ``cli_args``, now ``stepgraph.cli.training`` and ``stepgraph.cli.dataclass_options``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType

# Old flat module name -> its subpackage. `bench` is now the subpackage itself (its module is
# `bench.bench`), so it has no alias.
_MOVED: dict[str, str] = {
    **dict.fromkeys(["records", "datasets", "splits", "store"], "data"),
    **dict.fromkeys(
        ["collect", "runs", "verifiers", "signals", "observations", "tier_traces", "prm", "evaluate"], "collection"
    ),
    **dict.fromkeys(["cpo", "cpo_tiers", "allocator", "allocator_tiers", "allocator_stages", "radar"], "learning"),
    **dict.fromkeys(["tuning", "live_kappa", "calibrate", "guarantee"], "calibration"),
    **dict.fromkeys(["bench_tiers", "bench_allocator", "bench_radar", "compare", "policy_check"], "bench"),
}
# Parser modules that moved to the CLI package (argparse lives there only).
_MOVED_OUT = {"commands": "stepgraph.cli.training", "cli_args": "stepgraph.cli.dataclass_options"}


def _new_name(fullname: str) -> str | None:
    prefix, _, leaf = fullname.rpartition(".")
    if prefix != __name__ or leaf not in {*_MOVED, *_MOVED_OUT}:
        return None
    return _MOVED_OUT.get(leaf) or f"{__name__}.{_MOVED[leaf]}.{leaf}"


class _AliasLoader(importlib.abc.Loader):
    """Binds the old name to the moved module itself (one module object, not a copy)."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}; the old path will be removed", DeprecationWarning, stacklevel=2
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name

    def get_code(self, fullname: str) -> CodeType | None:
        # `python -m stepgraph.training.<old>` runs the moved module's code as __main__.
        spec = importlib.util.find_spec(self.new)
        assert spec is not None and isinstance(spec.loader, importlib.abc.InspectLoader)
        return spec.loader.get_code(self.new)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = _new_name(fullname)
        if new is None:
            return None
        moved = importlib.util.find_spec(new)
        origin = moved.origin if moved else None  # runpy sets sys.argv[0] from it
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new), origin=origin)


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
