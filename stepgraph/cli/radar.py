"""``stepgraph radar collect|fit|add|traces|bench``: RADAR's offline stages (``stepgraph.training.learning.radar``,
``stepgraph.training.bench.bench_radar``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stepgraph.cli.options import in_range, with_options
from stepgraph.models.base import DEFAULT_TEMPERATURE
from stepgraph.training.bench import bench_radar
from stepgraph.training.learning import radar


def add_command(sub: Any) -> None:
    """Add ``radar`` and its stages to the ``stepgraph`` CLI's subparsers; each stage runs the function of its name."""
    parser = sub.add_parser("radar", help="RADAR query-level routing: collect a response matrix, fit the 2PL model, add a configuration",
                           description="RADAR: an item-response (2PL) model over testbed configurations (tiers alone, budgets, the "
                           "stepwise policy at several κ) routes each query to the cheapest configuration able enough for it.")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    c = stages.add_parser("collect", help="run every configuration on a split's queries (resumable JSONL journals)")
    c.add_argument("--split", default="train", choices=["train", "calibration", "test", "shifted"],
                   help="testbed split; 'shifted' is test questions with 3-5 operations (default: %(default)s)")
    c.add_argument("--problems", type=in_range(int, 1), default=300, help="queries (default: %(default)s)")
    c.add_argument("--dir", dest="journal_dir", type=Path, default=Path("runs/radar/responses"), help="journal directory (default: %(default)s)")
    c.add_argument("--configurations", nargs="+", default=None, metavar="NAME",
                   choices=[c.name for c in radar.TESTBED_CONFIGURATIONS + radar.NEW_CONFIGURATIONS],
                   help="configurations to run (default: all: %(choices)s)")
    c.add_argument("--policy", type=Path, default=None, help="stepwise policy artifact (default: the shipped policy)")
    c.add_argument("--temperature", type=in_range(float, 0), default=DEFAULT_TEMPERATURE, help="sampling temperature (default: %(default)s)")
    c.add_argument("--seed", type=int, default=0,
                   help="base sampling seed; seeds share a journal, each query's run seed told apart (default: %(default)s)")
    c.set_defaults(func=with_options(radar.collect_command))

    f = stages.add_parser("fit", help="fit the 2PL model and the difficulty regressor on train, calibrate τ, write the artifact")
    f.add_argument("--responses", type=Path, default=Path("runs/radar/responses"), help="journals of `radar collect` (default: %(default)s)")
    f.add_argument("--train-problems", type=in_range(int, 5), default=300, help="train queries collected (default: %(default)s)")
    f.add_argument("--calibration-problems", type=in_range(int, 1), default=200, help="calibration queries collected (default: %(default)s)")
    f.add_argument("--pool", choices=sorted(radar.POOLS), default="hierarchical",
                   help="configurations routed among: query (tiers alone and budgets), hierarchical (cheap ones or the stepwise "
                        "policy), all (default: %(default)s)")
    f.add_argument("--alpha", type=in_range(float, 0, 1, exclusive=True), default=0.02, help="allowed miss rate (default: %(default)s)")
    f.add_argument("--extra", nargs="+", default=None, choices=[c.name for c in radar.NEW_CONFIGURATIONS], metavar="NAME",
                   help="configurations beyond the testbed's seven to fit with the others and add to the pool "
                        "(their train and calibration journals needed): %(choices)s")
    f.add_argument("--out", type=Path, default=Path("runs/radar/router"), help="artifact directory (default: %(default)s)")
    f.add_argument("--policy", type=Path, default=None, help="stepwise policy artifact (default: the shipped policy)")
    f.add_argument("--seed", type=int, default=0, help="fit seed (default: %(default)s)")
    f.set_defaults(func=with_options(radar.fit_command))

    n = stages.add_parser("add", help="add a configuration: estimate only its ability from a few max-information train queries")
    n.add_argument("--router", type=Path, default=Path("runs/radar/router"), help="artifact of `radar fit` (default: %(default)s)")
    n.add_argument("--configuration", default=radar.NEW_CONFIGURATIONS[0].name, choices=[c.name for c in radar.NEW_CONFIGURATIONS],
                   help="the configuration to add (default: %(default)s)")
    n.add_argument("--into-pool", action="store_true",
                   help="also route to it: add it to the pool and recalibrate τ on the calibration journals (needs "
                        "`radar collect --split calibration --configurations NAME`)")
    n.add_argument("--responses", type=Path, default=Path("runs/radar/responses"),
                   help="journals of `radar collect`, for --into-pool (default: %(default)s)")
    n.add_argument("--calibration-problems", type=in_range(int, 1), default=200,
                   help="calibration queries collected, for --into-pool (default: %(default)s)")
    n.add_argument("--budget", type=in_range(int, 1), default=30, help="queries to run it on (default: %(default)s)")
    n.add_argument("--out", type=Path, default=None, help="write the extended artifact here (default: over --router)")
    n.add_argument("--policy", type=Path, default=None, help="stepwise policy artifact (default: the shipped policy)")
    n.set_defaults(func=with_options(radar.add_command))

    t = stages.add_parser("traces", help="collect behaviour traces with RADAR's difficulty feature set (for `stepgraph train`)")
    t.add_argument("--router", type=Path, default=Path("runs/radar/router"), help="artifact of `radar fit` (default: %(default)s)")
    t.add_argument("--split", default="train", choices=["train", "calibration"], help="testbed split (default: %(default)s)")
    t.add_argument("--problems", type=in_range(int, 1), default=300, help="queries (default: %(default)s)")
    t.add_argument("--store", type=Path, default=Path("runs/radar/traces.sqlite"), help="trace store (default: %(default)s)")
    t.add_argument("--policy", type=Path, default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=with_options(radar.traces_command))

    b = stages.add_parser("bench", help="RADAR alone, the stepwise policy, RADAR → policy, the policy with the difficulty feature")
    b.add_argument("--responses", type=Path, default=Path("runs/radar/responses"), help="journals of `radar collect` (default: %(default)s)")
    b.add_argument("--train-problems", type=in_range(int, 5), default=300, help="train queries collected (default: %(default)s)")
    b.add_argument("--calibration-problems", type=in_range(int, 1), default=200, help="calibration queries (default: %(default)s)")
    b.add_argument("--problems", type=in_range(int, 1), default=150, help="test and shifted queries (default: %(default)s)")
    b.add_argument("--alpha", type=in_range(float, 0, 1, exclusive=True), nargs="+", default=[0.02, 0.05],
                   help="allowed miss rates the routers are calibrated for, each a row (default: 0.02 0.05)")
    b.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="sampling seeds of the test and shifted rows, each collected by `radar collect --seed` (default: 0)")
    b.add_argument("--policy", type=Path, default=None, help="stepwise policy artifact (default: the shipped policy)")
    b.add_argument("--difficulty-policy", type=Path, default=Path("runs/radar/policy_difficulty"),
                   help="policy trained on `radar traces` with the difficulty feature (row left out if absent) (default: %(default)s)")
    b.add_argument("--plain-policy", type=Path, default=Path("runs/radar/policy_plain"),
                   help="the same traces' policy with difficulty hidden (row left out if absent) (default: %(default)s)")
    b.add_argument("--router", type=Path, default=Path("runs/radar/router"),
                   help="artifact whose difficulty regressor made the difficulty traces (default: %(default)s; refitted if absent)")
    b.add_argument("--extra", nargs="+", default=None, choices=[c.name for c in radar.NEW_CONFIGURATIONS], metavar="NAME",
                   help="configurations added after the fit by adaptive ability (as `radar add --into-pool`), each with "
                        "router rows that include it; their journals needed on every split: %(choices)s")
    b.add_argument("--added-ability", choices=["adaptive", "full"], default="adaptive",
                   help="--extra configurations' ability: from adaptive testing, or a full refit with all their train answers "
                        "(default: %(default)s)")
    b.add_argument("--out", type=Path, default=Path("runs/radar/bench"), help="output directory (default: %(default)s)")
    b.set_defaults(func=with_options(bench_radar.bench_command))
