"""The offline subcommands of the ``stepgraph`` CLI: learn the routing policy from graph traces.

    stepgraph collect --store runs/traces.sqlite --problems 400
    stepgraph train --store runs/traces.sqlite --out runs/policy
    stepgraph evaluate --policy runs/policy --problems 200
    stepgraph bench --store runs/traces.sqlite --out runs/bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stepgraph.training.cli_args import add_dataclass_options, dataclass_from_args, in_range
from stepgraph.training.collect import collect, default_store_path, testbed_items
from stepgraph.training.cpo import CPOArgs, train_policy
from stepgraph.training.evaluate import evaluate_gates
from stepgraph.training.guarantee import calibration_guarantee
from stepgraph.training.store import TraceStore
from stepgraph.training.verifiers import TestbedVerifier

from stepgraph.defaults import DEFAULT_POLICY_DIR
from stepgraph.errors import StepgraphError
from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.gates import PolicyGate
from stepgraph.testbed import BACKENDS, close_pair, load_pair, task


def _collect(args: argparse.Namespace) -> dict:
    items = testbed_items(args.split, args.problems, seed=args.seed)
    verifier = TestbedVerifier(task.generate(args.split, args.problems, seed=args.seed))
    with TraceStore(args.store) as store:
        return collect(
            store, items, load_pair, verifier, split=args.split, threshold=args.threshold, feature=args.feature, epsilon=args.epsilon,
            seed=args.seed, temperature=args.temperature, workers=args.workers,
        )


def _train(args: argparse.Namespace) -> dict:
    cpo_args = dataclass_from_args(CPOArgs, args)
    with TraceStore(args.store, readonly=True) as store:
        episodes = list(store.episodes(split=args.split))
        calibration = list(store.episodes(split=args.calibration_split)) if args.calibration_split else []
        models = store.meta("models")
    if not episodes:
        raise StepgraphError(f"{args.store} holds no {args.split} episodes; run `stepgraph collect` first.")
    calibration = [e for e in calibration if e.steps]
    if calibration_guarantee(cpo_args.alpha, len(calibration))["type"] == "none":
        calibration = []  # too few for any κ to pass: keep the online κ rather than an uncalibrated κ = 0
    started = time.time()
    metrics_file = args.out / "metrics.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    with metrics_file.open("w") as log:
        artifact, _ = train_policy(episodes, cpo_args, calibration=calibration, ignore_features=args.ignore_feature,
                                   log=lambda step, m: log.write(json.dumps({"step": step, **m}) + "\n"))
    artifact.models = {"tiers": models or []}
    misses = round(artifact.training.get("calibration_surrogate_miss", 0.0) * len(calibration))
    artifact.guarantee = calibration_guarantee(cpo_args.alpha, len(calibration), misses)
    if artifact.guarantee["type"] == "none":
        print(f"stepgraph: warning: the policy has no coverage guarantee: {artifact.guarantee['reason']}", file=sys.stderr)
    artifact.training = {**artifact.training, "store": str(args.store), "episodes": len(episodes), "seconds": round(time.time() - started, 1)}
    artifact.save(args.out)
    keys = ("online_kappa", "calibration_episodes", "calibration_surrogate_miss", "surrogate_coverage", "escalation_rate")
    return {"out": str(args.out), "kappa": artifact.kappa, "alpha": artifact.alpha, "guarantee": artifact.guarantee["type"],
            "episodes": len(episodes), "ignored": artifact.ignored,
            "seconds": artifact.training["seconds"], "metrics": str(metrics_file),
            **{k: artifact.training[k] for k in keys if k in artifact.training}}


def _evaluate(args: argparse.Namespace) -> dict:
    # One row per policy, named "policy" for one and by directory for several.
    gates = {"policy" if len(args.policy) == 1 else str(path): PolicyGate.from_path(path) for path in args.policy}
    tiers = load_pair(args.backend)
    try:
        return {split: evaluate_gates(tiers, gates, testbed_items(split, args.problems, seed=args.seed), seed=args.seed,
                                      temperature=args.temperature)
                for split in args.splits}
    finally:
        close_pair(tiers)


def _bench(args: argparse.Namespace) -> dict:
    from stepgraph.training.bench import markdown_table, run_bench, write_outputs

    from stepgraph.costs import Prices

    with TraceStore(args.store, readonly=True) as store:
        episodes = list(store.episodes(split="train"))
    if not episodes:
        raise StepgraphError(f"{args.store} holds no train episodes; run `stepgraph collect` first.")
    calibration = task.generate("calibration", args.calibration_problems, seed=args.seed + 1)
    test = task.generate("test", args.problems, seed=args.seed)
    verifier = TestbedVerifier(calibration + test)
    prices = [Prices(args.input_price, args.cached_price, args.output_price)] * 2
    report = run_bench(
        load_pair(), train_episodes=episodes, policy_dir=args.policy,
        calibration=testbed_items("calibration", args.calibration_problems, seed=args.seed + 1),
        test=testbed_items("test", args.problems, seed=args.seed),
        verify=lambda q, prior, step: verifier.verify(q, "", prior, step), seeds=args.seeds, alpha=args.alpha, prices=prices,
    )
    files = write_outputs(report, args.out)
    print(markdown_table(report), file=sys.stderr)
    return files


def _single_threaded(handler: Callable[[argparse.Namespace], dict]) -> Callable[[argparse.Namespace], dict]:
    """Run a handler with one torch thread: the shipped artifacts were made so, and are reproduced bit for bit."""

    def run(args: argparse.Namespace) -> dict:
        import torch

        torch.set_num_threads(1)
        return handler(args)

    return run


def add_commands(sub: Any) -> None:
    """Add collect, train, evaluate and bench to the ``stepgraph`` CLI's subparsers.

    Each handler returns a dict that the CLI prints as JSON on stdout (progress goes to stderr).
    """
    c = sub.add_parser("collect", help="run the graph with an exploring gate and store traces (resumable)",
                       description="Run the graph over testbed problems with an exploring behaviour gate and store traces.")
    c.add_argument("--store", type=Path, default=default_store_path(), help="SQLite trace store (default: %(default)s)")
    c.add_argument("--split", default="train", choices=["train", "calibration", "test"], help="testbed split (default: %(default)s)")
    c.add_argument("--problems", type=in_range(int, 1), default=400, help="problems to collect (default: %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="problem and sampling seed (default: %(default)s)")
    c.add_argument("--threshold", type=in_range(float), default=0.9, help="behaviour gate's confidence threshold (default: %(default)s)")
    c.add_argument("--feature", default="api_confidence", choices=["api_confidence", "logit_confidence"],
                   help="confidence feature of the behaviour gate (default: %(default)s)")
    c.add_argument("--epsilon", type=in_range(float, 0, 1), default=0.3, help="behaviour gate's exploration rate (default: %(default)s)")
    c.add_argument("--temperature", type=in_range(float, 0), default=0.7, help="sampling temperature (default: %(default)s)")
    c.add_argument("--workers", type=in_range(int, 1), default=1, help="problems run concurrently, each worker with its own models (default: %(default)s)")
    c.set_defaults(func=_single_threaded(_collect))

    t = sub.add_parser("train", help="train π and κ by CPO on the stored traces and write the policy artifact",
                       description="Train the routing policy by CPO on stored traces, calibrate κ, write the artifact.")
    t.add_argument("--store", type=Path, default=default_store_path(), help="SQLite trace store (default: %(default)s)")
    t.add_argument("--split", default="train", help="which stored split to train on (default: %(default)s)")
    t.add_argument("--calibration-split", default="calibration",
                   help="stored split whose episodes calibrate κ after training; '' keeps the online κ (default: %(default)s)")
    t.add_argument("--out", type=Path, default=Path("runs/policy"), help="artifact directory (default: %(default)s)")
    t.add_argument("--ignore-feature", action="append", default=[], choices=CONFIDENCE_SCHEMA.names, metavar="NAME",
                   help="hide a feature from the policy, for a backend that does not report it, e.g. api_confidence "
                        "on a vLLM engine with raw logits (repeatable; choices: %(choices)s)")
    add_dataclass_options(t, CPOArgs)
    t.set_defaults(func=_single_threaded(_train))

    e = sub.add_parser("evaluate", help="run the trained gate live in the graph against target-only and draft-only",
                       description="Run policies live in the graph beside target-only and draft-only on the same problems.")
    e.add_argument("--policy", type=Path, nargs="+", default=[Path("runs/policy")],
                   help="policy artifact directories, each a row (default: runs/policy)")
    e.add_argument("--backend", default="transformers", choices=BACKENDS,
                   help="run the shipped pair on local transformers or on vLLM engines (default: %(default)s)")
    e.add_argument("--splits", nargs="+", default=["calibration", "test"], help="testbed splits (default: calibration test)")
    e.add_argument("--problems", type=in_range(int, 1), default=200, help="problems per split (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0, help="problem and sampling seed (default: %(default)s)")
    e.add_argument("--temperature", type=in_range(float, 0), default=0.7, help="sampling temperature (default: %(default)s)")
    e.set_defaults(func=_single_threaded(_evaluate))

    b = sub.add_parser("bench", help="every method side by side on the same problems: table, CSV/JSON, Pareto plot",
                       description="Run every routing method on the same problems and seeds; write table, CSV/JSON and plot.")
    b.add_argument("--store", type=Path, default=default_store_path(), help="trace store whose train episodes fit STEER and the PRM (default: %(default)s)")
    b.add_argument("--policy", type=Path, default=DEFAULT_POLICY_DIR, help="CPO policy artifact (default: the shipped policy)")
    b.add_argument("--out", type=Path, default=Path("runs/bench"), help="output directory (default: %(default)s)")
    b.add_argument("--problems", type=in_range(int, 1), default=200, help="test-split problems (default: %(default)s)")
    b.add_argument("--calibration-problems", type=in_range(int, 1), default=100, help="calibration problems for threshold grid search (default: %(default)s)")
    b.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds, each a full run (default: 0 1 2)")
    b.add_argument("--seed", type=int, default=0, help="problem-selection seed (default: %(default)s)")
    b.add_argument("--alpha", type=in_range(float, 0, 1, exclusive=True), default=0.02, help="coverage target 1 - alpha for threshold selection (default: %(default)s)")
    b.add_argument("--input-price", type=in_range(float, 0), default=0.40, help="$ per 1M input tokens (default: %(default)s)")
    b.add_argument("--cached-price", type=in_range(float, 0), default=0.10, help="$ per 1M cached input tokens (default: %(default)s)")
    b.add_argument("--output-price", type=in_range(float, 0), default=1.60, help="$ per 1M output tokens (default: %(default)s)")
    b.set_defaults(func=_single_threaded(_bench))
