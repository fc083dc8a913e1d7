"""The measurement and upkeep commands behind BENCHMARKS.md: ``stepgraph reobserve | signals | policy-check | bench-allocator | taxonomy``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stepgraph.cli.options import in_range, with_options
from stepgraph.models.base import DEFAULT_TEMPERATURE
from stepgraph.training.bench.policy_check import THRESHOLD_FEATURES, policy_check
from stepgraph.training.collection.observations import reobserve_store


def add_commands(sub: Any) -> None:
    """Add reobserve, signals, policy-check and bench-allocator to the ``stepgraph`` CLI's subparsers."""
    r = sub.add_parser("reobserve", help="copy a trace store with every observation recomputed from its stored draft outputs")
    r.add_argument("--store", required=True, help="trace store to read (unchanged)")
    r.add_argument("--out", required=True, help="new trace store to write")
    r.set_defaults(func=with_options(reobserve_store))

    s = sub.add_parser("signals", help="how well each observation flags a wrong draft step: AUROC and escalation at 95%% recall, "
                       "one JSON row per feature set")
    s.add_argument("--store", required=True, help="trace store to read")
    s.add_argument("--fit", default="train", help="split the scorers are fitted on (default: %(default)s)")
    s.add_argument("--eval", default="calibration", help="split they are scored on (default: %(default)s)")
    s.set_defaults(func=_signals)

    c = sub.add_parser("policy-check", help="policies against exactly tuned single-feature thresholds, live on unseen problems")
    c.add_argument("--store", required=True, type=Path, help="trace store whose calibration split tunes the thresholds")
    c.add_argument("--policy", dest="policies", nargs="+", type=Path, default=[], metavar="DIR", help="policy artifact directories")
    c.add_argument("--problems", type=in_range(int, 1), default=400, help="test-split problems (default: %(default)s)")
    c.add_argument("--seed", type=int, default=11, help="problem and sampling seed (default: %(default)s)")
    c.add_argument("--alpha", type=in_range(float, 0, 1, exclusive=True), default=0.02, help="allowed miss rate (default: %(default)s)")
    c.add_argument("--thresholds", nargs="*", default=list(THRESHOLD_FEATURES),
                   help="features to tune thresholds on (default: %(default)s)")
    c.add_argument("--shifted", action="store_true", help="four-operation problems")
    c.add_argument("--out", type=Path, default=None, help="write the report here as JSON")
    c.set_defaults(func=with_options(policy_check))

    a = sub.add_parser("bench-allocator", help="a trained allocator, alone and before the policy, against the policy (a table)")
    a.add_argument("--allocator", type=Path, default=Path("runs/allocator"), help="allocator artifact (default: %(default)s)")
    a.add_argument("--combined-allocator", type=Path, default=None,
                   help="allocator calibrated for the combination with the policy (default: --allocator)")
    a.add_argument("--policy", type=Path, default=None, help="post-hoc policy (default: the shipped one)")
    a.add_argument("--problems", type=in_range(int, 1), default=200, help="test-split problems (default: %(default)s)")
    a.add_argument("--seed", type=int, default=0, help="problem-selection seed (default: %(default)s)")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds (default: 0 1 2)")
    a.add_argument("--out", type=Path, default=None, help="write the report as JSON here (default: print only the table)")
    a.set_defaults(func=with_options(_bench_allocator))

    t = sub.add_parser("taxonomy", help="task v2: a tier's wrong steps by kind, and the share each routing feature flags (a table)")
    t.add_argument("--model", type=Path, required=True, help="a saved v2 model directory (e.g. a draft)")
    t.add_argument("--problems", type=in_range(int, 1), default=300, help="problems (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="problems' and sampling seed (default: %(default)s)")
    t.add_argument("--temperature", type=in_range(float, 0), default=DEFAULT_TEMPERATURE,
                   help="0 for greedy (default: %(default)s, as the router samples)")
    t.add_argument("--split", default="test", choices=["test", "heldout", "calibration"], help="default: %(default)s")
    t.set_defaults(func=with_options(_taxonomy))


def _signals(args: argparse.Namespace) -> int:
    from stepgraph.errors import TraceStoreError
    from stepgraph.training.collection.signals import signal_table
    from stepgraph.training.data.store import TraceStore

    with TraceStore(args.store, readonly=True) as store:
        fit, evaluate = list(store.episodes(args.fit)), list(store.episodes(args.eval))
        for split, episodes, flag in ((args.fit, fit, "--fit"), (args.eval, evaluate, "--eval")):
            if not episodes:  # store.path: a PostgreSQL URL with its password hidden
                raise TraceStoreError(f"{store.path} holds no {split!r} episodes to score the signals on: collect them "
                                      f"(stepgraph collect --split {split}) or name another split with {flag}.")
    for row in signal_table(fit, evaluate):
        print(json.dumps(row))
    return 0


def _taxonomy(**options: Any) -> int:
    from stepgraph.training.bench.taxonomy import error_taxonomy

    print(error_taxonomy(**options, command="stepgraph " + " ".join(sys.argv[1:])))
    return 0


def _bench_allocator(**options: Any) -> int:
    from stepgraph.training.bench.bench_allocator import bench_trained_allocator, markdown_table

    print(markdown_table(bench_trained_allocator(**options)))
    return 0
