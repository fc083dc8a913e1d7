"""Offline learning of the routing policy: collect traces, train by CPO, calibrate, evaluate, export.

Subpackages: ``data`` (records, datasets, splits, store), ``collection`` (collect, runs,
verifiers, observations, signals), ``learning`` (CPO, allocator, RADAR fit), ``calibration``
(kappa and thresholds) and ``bench``. The flat module paths of earlier releases
(``stepgraph.training.cpo`` ...) still import, with a DeprecationWarning, through one alias table, and so do
``commands`` and ``cli_args``, now ``stepgraph.cli.training`` and ``stepgraph.cli.dataclass_options``.
"""

from __future__ import annotations

from stepgraph import _moved

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

_moved.install({**{f"{__name__}.{leaf}": f"{__name__}.{package}.{leaf}" for leaf, package in _MOVED.items()},
                **{f"{__name__}.{leaf}": new for leaf, new in _MOVED_OUT.items()}})
