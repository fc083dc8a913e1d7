"""The offline subcommands of the ``stepgraph`` CLI: learn the routing policy from graph traces.

    stepgraph collect --store runs/traces.sqlite --problems 400
    stepgraph train --store runs/traces.sqlite --out runs/policy
    stepgraph evaluate --policy runs/policy --problems 200
    stepgraph bench --store runs/traces.sqlite --out runs/bench

With ``--config run.toml`` (a run spec, ``stepgraph.training.spec``) every stage takes its tiers,
data splits, verifier, gate, α, sampling and paths from the file instead of the testbed:

    stepgraph collect --config run.toml --split train
    stepgraph collect --config run.toml --split calibration
    stepgraph train --config run.toml
    stepgraph calibrate --config run.toml
    stepgraph evaluate --config run.toml
    stepgraph bench --config run.toml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepgraph.artifacts.tiers import recorded_tiers
from stepgraph.cli.dataclass_options import add_dataclass_options, dataclass_from_args
from stepgraph.cli.options import in_range
from stepgraph.defaults import DEFAULT_POLICY_DIR
from stepgraph.domain import DEFAULT_PERCENTILE
from stepgraph.errors import ConfigError, StepgraphError
from stepgraph.features import FEATURE_SCHEMA
from stepgraph.models.base import DEFAULT_TEMPERATURE
from stepgraph.routing.gates import Gate, PolicyGate
from stepgraph.testbed import BACKENDS, TIER_DIRS, close_pair, load_tiers, testbed_task
from stepgraph.training.calibration.calibrate import (
    CURVE_ALPHAS,
    check_tiers,
    load_gate_artifact,
    min_episodes,
    too_few_message,
)
from stepgraph.training.calibration.domain import build_tiers_for, domain_from, domain_with_tiers
from stepgraph.training.calibration.guarantee import calibration_guarantee, episodes_needed
from stepgraph.training.collection.collect import collect, default_store_path, testbed_items
from stepgraph.training.collection.evaluate import evaluate_gates
from stepgraph.training.collection.verifiers import TestbedVerifier
from stepgraph.training.data.store import TraceStore, redact, store_location
from stepgraph.training.learning.cpo import CPOArgs, train_policy
from stepgraph.training.learning.cpo_tiers import TierCPOArgs, train_tier_policy
from stepgraph.training.learning.refine import RefineArgs

if TYPE_CHECKING:
    from stepgraph.training.spec import RunSpec


def add_domain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain-percentile", type=in_range(float, 0, 100, exclusive=True), default=DEFAULT_PERCENTILE, metavar="P",
                        help="out-of-domain signal: a question scoring below this percentile of the calibration questions' mean "
                             "token log-likelihood is out of the domain and written by the strongest tier (default: %(default)s)")
    parser.add_argument("--domain-tier", type=int, default=-1, metavar="TIER",
                        help="out-of-domain signal: the tier that scores questions, by index, negative from the strongest "
                             "(default: %(default)s, the strongest)")
    parser.add_argument("--no-domain", action="store_true", help="write no out-of-domain threshold (the signal is off)")


def _spec(args: argparse.Namespace) -> RunSpec | None:
    from stepgraph.training.spec import load_spec

    spec = load_spec(args.config) if getattr(args, "config", None) else None
    if spec is not None and getattr(args, "skip_bad_rows", False):
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"skip_bad_rows": True})})
    return spec


def _collect(args: argparse.Namespace) -> dict:
    spec = _spec(args)
    if spec is not None:
        return _collect_from_spec(spec, args)
    n_tiers = args.tiers or 2
    if n_tiers > 2 and not args.record_tiers:
        raise ConfigError(f"--tiers {n_tiers} collects for the K-tier policy, which trains on every tier's step: add --record-tiers.")
    items = testbed_items(args.split, args.problems, seed=args.seed)
    verifier = TestbedVerifier(testbed_task().generate(args.split, args.problems, seed=args.seed))
    with TraceStore(args.store or default_store_path()) as store:
        return collect(
            store, items, lambda: load_tiers(n_tiers), verifier, split=args.split, threshold=args.threshold, feature=args.feature,
            epsilon=args.epsilon, seed=args.seed, temperature=args.temperature, workers=args.concurrency, record_tiers=args.record_tiers,
        )


def _collect_from_spec(spec: RunSpec, args: argparse.Namespace) -> dict:
    if args.tiers is not None:
        raise ConfigError(f"--tiers picks the shipped testbed tiers; with --config the tiers are {spec.source}'s [[tiers]].")
    items = spec.items(args.split)
    if not items:
        raise ConfigError(f"{spec.source}: data.splits gives the {args.split} split no questions.")
    store_path = args.store or spec.paths.store
    with TraceStore(store_path) as store:
        report = collect(
            store, items, spec.build_tiers, None, split=args.split, threshold=spec.collect.threshold,  # type: ignore[arg-type]
            feature=spec.collect.feature, epsilon=spec.collect.epsilon, seed=spec.sampling.seed, temperature=spec.sampling.temperature,
            workers=args.concurrency, context=spec.context(), verifier_for=spec.build_verifier, describe_tiers=spec.describe_tiers,
            record_tiers=args.record_tiers,
        )
    return {**report, "store": redact(store_path), "split": args.split}


def _train(args: argparse.Namespace) -> dict:
    spec = _spec(args)
    if spec is not None:  # the spec's α and paths, unless given on the command line
        args.alpha = spec.alpha if args.alpha is None else args.alpha
        args.store, args.out = args.store or spec.paths.store, args.out or (None if args.allocator else spec.paths.policy)
    args.store, args.out = args.store or default_store_path(), args.out or Path("runs/allocator" if args.allocator else "runs/policy")
    if args.allocator:  # the ex-ante allocator: its own stages and artifact (stepgraph.training.learning.allocator)
        from stepgraph.training.learning.allocator import train_allocator_command

        if args.tier_policy or args.columns:
            raise ConfigError("--allocator trains the ex-ante allocator, --tier-policy / --columns the K-tier policy: choose one.")
        return train_allocator_command(args.store, args.out, dataclass_from_args(CPOArgs, args), split=args.split,
                                       calibration_split=args.calibration_split, columns=args.allocator_columns,
                                       gate_dir=args.allocator_gate, supervised_epochs=args.supervised_epochs,
                                       supervised_lr=args.supervised_lr)
    with TraceStore(args.store, readonly=True) as store:
        episodes = list(store.episodes(split=args.split))
        calibration = list(store.episodes(split=args.calibration_split)) if args.calibration_split else []
        models = store.meta("models")
    if not episodes:
        raise StepgraphError(f"{redact(args.store)} holds no {args.split} episodes; run `stepgraph collect` first.")
    calibration = [e for e in calibration if e.steps]
    if args.tier_policy or args.columns or len(models or []) > 2:
        return _train_tiers(args, spec, episodes, calibration, models or [])
    cpo_args = dataclass_from_args(CPOArgs, args)
    if calibration and len(calibration) < min_episodes(cpo_args.alpha):
        # Too few for any κ to pass: keep the online κ (recorded as "no guarantee") rather than an uncalibrated κ = 0.
        print(f"stepgraph: warning: {too_few_message(len(calibration), cpo_args.alpha)}", file=sys.stderr)
        calibration = []
    started = time.time()
    artifact, metrics_file = _with_metrics(args.out, lambda log: train_policy(
        episodes, cpo_args, calibration=calibration, ignore_features=args.ignore_feature, log=log))
    artifact.tiers = list(models or [])
    misses = round(artifact.training.get("calibration_surrogate_miss", 0.0) * len(calibration))
    artifact.guarantee = calibration_guarantee(cpo_args.alpha, len(calibration), misses)
    if artifact.guarantee["type"] == "none":
        print(f"stepgraph: warning: the policy has no coverage guarantee: {artifact.guarantee['reason']}", file=sys.stderr)
    artifact.training = {**artifact.training, "store": redact(args.store), "episodes": len(episodes), "seconds": round(time.time() - started, 1)}
    artifact.domain = domain_with_tiers(args, build_tiers_for(spec, models or []), [e.question for e in calibration or episodes], models)
    artifact.save(args.out)
    keys = ("online_kappa", "calibration_episodes", "calibration_surrogate_miss", "surrogate_coverage", "escalation_rate")
    if not calibration:
        print(f"stepgraph train: note: {NO_GUARANTEE}", file=sys.stderr)
    return {"out": str(args.out), "kappa": artifact.kappa, "alpha": artifact.alpha, "guarantee": artifact.guarantee["type"],
            "episodes": len(episodes), "ignored": artifact.ignored,
            "seconds": artifact.training["seconds"], "metrics": str(metrics_file),
            **{k: artifact.training[k] for k in keys if k in artifact.training}}


def _with_metrics(out: Path, train: Callable[[Callable[[int, dict], object]], tuple[Any, Any]]) -> tuple[Any, Path]:
    """Run ``train(log)`` with each update's metrics written to ``out/metrics.jsonl``; the artifact and that file."""
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.jsonl"
    with metrics_file.open("w") as log:
        artifact, _ = train(lambda step, m: log.write(json.dumps({"step": step, **m}) + "\n"))
    return artifact, metrics_file


def _train_tiers(args: argparse.Namespace, spec: RunSpec | None, episodes: list, calibration: list, tiers: list[dict[str, Any]]) -> dict:
    """The K-tier policy (``cpo_tiers.train_tier_policy``) on a store whose episodes record every tier's step."""
    cpo_args = dataclass_from_args(TierCPOArgs, args)
    columns = args.columns or list(range(len(tiers)))
    if len(columns) < 2 or columns != sorted(set(columns)) or not 0 <= columns[0] <= columns[-1] < len(tiers):
        recorded = ", ".join(f"{i}: {tier.get('name')}" for i, tier in enumerate(tiers))
        raise ConfigError(f"--columns takes at least two of the store's recorded tiers ({recorded}) in increasing order, got {columns}.")
    for split, held in ((args.split, episodes), (args.calibration_split, calibration)):
        if bad := next((e for e in held if any(not s.tiers or len(s.tiers) != len(tiers) for s in e.steps)), None):
            raise StepgraphError(f"{redact(args.store)}: {split} episode {bad.problem_id!r} records no step of every tier, which the K-tier "
                                 "policy trains on. Collect with `stepgraph collect --record-tiers` into a new --store.")
    if calibration and len(calibration) < min_episodes(cpo_args.alpha):
        print(f"stepgraph: warning: {too_few_message(len(calibration), cpo_args.alpha)}", file=sys.stderr)
        calibration = []
    started = time.time()
    artifact, metrics_file = _with_metrics(args.out, lambda log: train_tier_policy(
        episodes, tiers, cpo_args, columns=columns, calibration=calibration, ignore_features=args.ignore_feature, log=log))
    artifact.training = {**artifact.training, "store": redact(args.store), "seconds": round(time.time() - started, 1)}
    artifact.domain = domain_with_tiers(args, build_tiers_for(spec, tiers), [e.question for e in calibration or episodes], tiers,
                                        columns)
    artifact.save(args.out)
    guarantee = artifact.guarantee or {}
    if guarantee.get("type") == "none":
        print(f"stepgraph: warning: the policy has no coverage guarantee: {guarantee['reason']}", file=sys.stderr)
    keys = ("online_kappa", "calibration_episodes", "surrogate_coverage")
    return {"out": str(args.out), "format": "stepgraph.policy", "tiers": [t.get("name") for t in artifact.tiers],
            "kappa": artifact.kappa, "alpha": artifact.alpha, "guarantee": guarantee.get("type"),
            "episodes": artifact.training["episodes"], "seconds": artifact.training["seconds"], "metrics": str(metrics_file),
            **{k: artifact.training[k] for k in keys if k in artifact.training}}


NO_GUARANTEE = ("no calibration episodes: κ is the online value from training, with no held-out coverage guarantee; "
                "collect a calibration split and run `stepgraph calibrate` (or train with --calibration-split).")


def _calibrate(args: argparse.Namespace) -> dict:
    from stepgraph.training.calibration.calibrate import (
        PRM_FILE,
        Replay,
        fit_steer,
        policy_family,
        prm_family,
        save_gate,
        steer_family,
        threshold_family,
    )
    from stepgraph.training.collection.prm import StepRewardModel

    spec = _spec(args)
    alpha = args.alpha if args.alpha is not None else (spec.alpha if spec else CPOArgs.alpha)
    store_path = args.store or (spec.paths.store if spec else default_store_path())
    out = args.out or (spec.paths.gate if spec else Path("runs/gate"))
    if args.runs is None and (args.escalate_to is not None or args.tier_offsets is not None):
        raise ConfigError("--escalate-to and --tier-offsets set a policy's routing for κ calibrated on live runs: add --runs N.")
    if args.domain_only:
        return _calibrate_domain(args, spec, out)
    if args.runs is not None:
        return _calibrate_on_runs(args, spec, alpha, out)
    if args.delta is not None:
        raise ConfigError("--delta (the PAC bound) calibrates κ on live runs: add --runs N (on stored traces κ is split conformal).")
    name = args.gate or (spec.gate.name if spec and spec.gate.name in ("policy", "threshold", "steer", "prm") else "policy")
    with TraceStore(store_path, create=False) as store:
        calibration = list(store.episodes(split=args.split))
        train = list(store.episodes(split="train")) if name in ("steer", "prm") else []
        tiers = store.meta("models") or []
    if not calibration:
        raise StepgraphError(f"{redact(store_path)} holds no {args.split} episodes; run `stepgraph collect --split {args.split}` first.")
    options: dict[str, Any] = {}
    if name == "policy":
        policy_dir = args.policy or (spec.paths.policy if spec else Path("runs/policy"))
        gate = PolicyGate.from_path(policy_dir)
        check_tiers(gate.artifact.models.get("tiers"), tiers, str(policy_dir), args.allow_other_tiers)
        family = policy_family(gate)
    elif name == "threshold":
        options["feature"] = args.feature or (spec.collect.feature if spec else "api_confidence")
        family = threshold_family(options["feature"])
    elif name == "steer":
        steer = fit_steer(train)
        family = steer_family(steer)
    else:  # RSD's process reward model, fitted on the train split's step verdicts
        if not train:
            raise StepgraphError(f"{redact(store_path)} holds no train episodes to fit the reward model on.")
        prm = StepRewardModel().fit(train)
        family = prm_family(prm)
    replay = Replay(family, calibration)
    result = replay.calibrate(alpha)
    curve = replay.curve([*CURVE_ALPHAS, alpha])
    summary = {**result.as_dict(), "met": result.misses <= result.allowed, "store": redact(store_path), "split": args.split}
    domain = domain_with_tiers(args, build_tiers_for(spec, tiers), [e.question for e in calibration], tiers)
    if name == "policy":
        artifact = dataclasses.replace(gate.artifact, kappa=result.threshold, alpha=alpha, domain=domain)
        artifact.training = {**artifact.training, "recalibrated": summary}
        artifact.save(out)
    elif name == "steer":
        out.mkdir(parents=True, exist_ok=True)
        steer.save(out / "steer.json")
    elif name == "prm":
        out.mkdir(parents=True, exist_ok=True)
        prm.save(out / PRM_FILE)
    save_gate(out, name, {**options, "threshold": result.threshold}, tiers=tiers, calibration={**summary, "curve": curve}, domain=domain)
    print(curve_table(curve), file=sys.stderr)
    if not summary["met"]:
        print(f"stepgraph calibrate: warning: no threshold meets α = {alpha} on the surrogate; the gate escalates as much as it can.",
              file=sys.stderr)
    return {"out": str(out), "gate": name, **summary, "curve": curve}


def _calibrate_on_runs(args: argparse.Namespace, spec: RunSpec | None, alpha: float, out: Path) -> dict:
    """``calibrate --runs N``: κ of a policy (2-tier or K-tier) from live runs of N calibration problems (``live_kappa``)."""
    from stepgraph.artifacts.tiers import describe
    from stepgraph.training.calibration.calibrate import save_gate
    from stepgraph.training.calibration.live_kappa import calibrate_kappa, curve_rows, with_live_kappa

    if args.gate not in (None, "policy"):
        raise ConfigError(f"--runs calibrates a policy's κ; --gate {args.gate} is calibrated on the stored traces (leave out --runs).")
    if args.runs < episodes_needed(alpha, args.delta):
        bound = "split conformal" if args.delta is None else f"the PAC bound at δ = {args.delta}"
        raise ConfigError(f"--runs {args.runs} cannot certify α = {alpha}: {bound} needs at least "
                          f"{episodes_needed(alpha, args.delta)} calibration problems; raise --runs or --alpha.")
    policy_dir = args.policy or (spec.paths.policy if spec else Path("runs/policy"))
    gate = PolicyGate(PolicyGate.from_path(policy_dir).artifact.with_routing(args.escalate_to, args.tier_offsets))
    recorded = gate.artifact.models.get("tiers") or []
    if spec is not None:
        items, seed, context, prices = spec.items("calibration"), spec.sampling.seed, spec.context(), spec.prices()
        if len(items) < args.runs:
            raise ConfigError(f"--runs {args.runs}: {spec.source} gives the calibration split only {len(items)} questions (data.splits).")
        items, tiers = items[: args.runs], spec.build_tiers()
        current = spec.describe_tiers(tiers)
    else:
        items, seed, context, prices = testbed_items("calibration", args.runs, seed=args.seed), args.seed, None, None
        tiers = load_tiers(_shipped_tier_count({str(policy_dir): gate}))
        current = describe(tiers)
    try:
        check_tiers(recorded, current, str(policy_dir), args.allow_other_tiers or bool(spec and spec.gate.allow_other_tiers))
        calibrated = calibrate_kappa(tiers, gate, items, alphas=sorted({*CURVE_ALPHAS, alpha}), seed=seed, context=context,
                                     prices=prices, concurrency=args.concurrency, delta=args.delta)
        domain = domain_from(args, tiers, [item.question for item in items])
    finally:
        close_pair(tiers)
    chosen = calibrated[alpha]
    artifact = dataclasses.replace(with_live_kappa(gate.artifact, chosen, alpha), domain=domain)
    artifact.save(out)
    curve = curve_rows(calibrated, args.delta)
    summary = {"threshold": artifact.kappa, "alpha": alpha, "delta": args.delta, "kappa_from": "calibration runs",
               "guarantee": chosen["guarantee"]["type"],
               "kappa_before": gate.artifact.kappa, **chosen["calibration"]}
    save_gate(out, "policy", {"threshold": artifact.kappa}, tiers=current, calibration={**summary, "curve": curve}, domain=domain)
    print(curve_table(curve, "coverage (runs)"), file=sys.stderr)
    if chosen["guarantee"]["type"] == "none":
        print(f"stepgraph calibrate: warning: {chosen['guarantee']['reason']}", file=sys.stderr)
    return {"out": str(out), "gate": "policy", "policy": str(policy_dir), **summary, "curve": curve}


def _calibrate_domain(args: argparse.Namespace, spec: RunSpec | None, out: Path) -> dict:
    """``calibrate --domain-only``: (re)compute a policy's out-of-domain threshold on calibration questions; κ and weights kept."""
    from stepgraph.artifacts.tiers import describe

    policy_dir = args.policy or (spec.paths.policy if spec else Path("runs/policy"))
    gate = PolicyGate.from_path(policy_dir)
    recorded = gate.artifact.models.get("tiers") or []
    n = args.runs or DOMAIN_QUESTIONS
    items = spec.items("calibration")[:n] if spec is not None else testbed_items("calibration", n, seed=args.seed)
    build = build_tiers_for(spec, recorded or [{}, {}])
    if build is None:
        raise ConfigError(f"{policy_dir} was trained on other tiers than the shipped testbed's: give its tiers with --config.")
    tiers = build()
    try:
        check_tiers(recorded, spec.describe_tiers(tiers) if spec else describe(tiers), str(policy_dir), args.allow_other_tiers)
        domain = domain_from(args, tiers, [item.question for item in items])
    finally:
        close_pair(tiers)
    dataclasses.replace(gate.artifact, domain=domain).save(out)
    return {"out": str(out), "policy": str(policy_dir), "domain": None if domain is None else domain.model_dump()}


def _refine(args: argparse.Namespace) -> dict:
    """``refine``: fit a policy's escalation log-odds to its own routed runs on train problems (``learning.refine``)."""
    from stepgraph.artifacts.tiers import describe
    from stepgraph.training.learning.refine import record_decisions, refit

    spec = _spec(args)
    refine_args = dataclass_from_args(RefineArgs, args)  # refuses out-of-range options before any model loads
    policy_dir = args.policy or (spec.paths.policy if spec else Path("runs/policy"))
    gate = PolicyGate(PolicyGate.from_path(policy_dir).artifact.with_routing(args.escalate_to, args.tier_offsets))
    recorded = gate.artifact.models.get("tiers") or []
    if spec is not None:
        items, seed, context = spec.items(args.split)[: args.problems], spec.sampling.seed, spec.context()
        if not items:
            raise ConfigError(f"{spec.source}: data.splits gives the {args.split} split no questions.")
        tiers = spec.build_tiers()
        current, verifier = spec.describe_tiers(tiers), spec.build_verifier(tiers)
    else:
        problems = testbed_task().generate(args.split, args.problems, seed=args.seed)
        items, seed, context = testbed_items(args.split, args.problems, seed=args.seed), args.seed, None
        tiers = load_tiers(_shipped_tier_count({str(policy_dir): gate}))
        current, verifier = describe(tiers), TestbedVerifier(problems)
    started = time.time()
    try:
        check_tiers(recorded, current, str(policy_dir), args.allow_other_tiers or bool(spec and spec.gate.allow_other_tiers))
        decisions = record_decisions(tiers, gate, items, verifier, seed=seed, context=context)
    finally:
        close_pair(tiers)
    artifact = refit(gate.artifact, decisions, refine_args)
    artifact.training["refined"] |= {"policy": str(policy_dir), "split": args.split, "problems": len(items),
                                     "seconds": round(time.time() - started, 1)}
    artifact.save(args.out)
    print(f"stepgraph refine: calibrate κ next: stepgraph calibrate --policy {args.out} --runs N --out DIR", file=sys.stderr)
    return {"out": str(args.out), **artifact.training["refined"]}


DOMAIN_QUESTIONS = 400
"""``calibrate --domain-only`` without --runs: how many calibration questions the threshold is computed on."""


def curve_table(curve: list[dict[str, Any]], coverage: str = "coverage (surrogate)") -> str:
    lines = [f"| alpha | threshold | {coverage} | FLOPs vs target | escalation rate |", "|---|---|---|---|---|"]
    for row in curve:
        if "needs_episodes" in row:
            lines.append(f"| {row['alpha']} | needs ≥ {row['needs_episodes']} episodes | | | |")
        else:
            lines.append(f"| {row['alpha']} | {row['threshold']:.4g} | {row['coverage']:.3f} | {row['flops_vs_target']:.3f} "
                         f"| {row['escalation_rate']:.3f} |")
    return "\n".join(lines)


def _evaluate(args: argparse.Namespace) -> dict:
    spec = _spec(args)
    if spec is not None:
        return _evaluate_from_spec(spec, args)
    # One row per policy, named "policy" for one and by directory for several.
    policies = args.policy or [Path("runs/policy")]
    gates = {"policy" if len(policies) == 1 else str(path): PolicyGate.from_path(path) for path in policies}
    tiers = load_tiers(_shipped_tier_count(gates), args.backend)
    try:
        return {split: evaluate_gates(tiers, gates, testbed_items(split, args.problems, seed=args.seed), seed=args.seed,
                                      temperature=args.temperature, concurrency=args.concurrency,
                                      journal_dir=args.resume / split if args.resume else None)
                for split in args.splits}
    finally:
        close_pair(tiers)


def _shipped_tier_count(gates: Mapping[str, Gate]) -> int:
    """How many shipped tiers the gates' artifacts were trained on (2 for one that records none, as v1's); all must agree."""
    counts = {name: len(recorded_tiers(gate) or []) or 2 for name, gate in gates.items()}
    if len(set(counts.values())) > 1:
        raise ConfigError(f"These policies route different numbers of tiers ({counts}); evaluate the 2-tier and 3-tier "
                          "ones in separate runs, or compare them with `stepgraph bench --tiers 3`.")
    n_tiers = next(iter(counts.values()))
    if n_tiers not in TIER_DIRS:
        raise ConfigError(f"{', '.join(counts)}: trained on {n_tiers} tiers; the testbed ships {sorted(TIER_DIRS)}: give the tiers "
                          "with --config.")
    return n_tiers


def _evaluate_from_spec(spec: RunSpec, args: argparse.Namespace) -> dict:
    tiers = spec.build_tiers()
    try:
        allow = args.allow_other_tiers or spec.gate.allow_other_tiers
        if args.policy:
            gates = {str(p): load_gate_artifact(p, tiers, allow) for p in args.policy}
        else:
            gates = {spec.gate.name: spec.build_gate(tiers)}
        report: dict[str, Any] = {"tiers": spec.describe_tiers(tiers)}
        for split in args.splits:
            items = spec.items(split)[: args.problems] if args.problems else spec.items(split)
            if items:
                report[split] = evaluate_gates(tiers, gates, items, seed=spec.sampling.seed, context=spec.context(),
                                               prices=spec.prices(), concurrency=args.concurrency,
                                               journal_dir=args.resume / split if args.resume else None)
        return report
    finally:
        close_pair(tiers)


def _bench(args: argparse.Namespace) -> dict:
    from stepgraph.models.costs import Prices
    from stepgraph.training.bench.bench import markdown_table, run_bench, write_outputs

    spec = _spec(args)
    if args.frontier is None:
        args.frontier = [0.97, 0.98, 0.99] if args.tiers == 3 else []
    if args.tiers == 3:
        return _bench_tiers(args)
    if spec is not None:
        return _bench_from_spec(spec, args)
    args.store, args.out = args.store or default_store_path(), args.out or Path("runs/bench")
    with TraceStore(args.store, readonly=True) as store:
        episodes = list(store.episodes(split="train"))
    if not episodes:
        raise StepgraphError(f"{redact(args.store)} holds no train episodes; run `stepgraph collect` first.")
    calibration = testbed_task().generate("calibration", args.calibration_problems, seed=args.seed + 1)
    test = testbed_task().generate("test", args.problems, seed=args.seed)
    verifier = TestbedVerifier(calibration + test)
    policy_path = args.policy or DEFAULT_POLICY_DIR
    tiers = load_tiers(_shipped_tier_count({str(policy_path): load_gate_artifact(policy_path)}))  # the tiers it records
    prices = [Prices(args.input_price, args.cached_price, args.output_price)] * len(tiers)
    report = run_bench(
        tiers, train_episodes=episodes, policy=load_gate_artifact(policy_path, tiers, args.allow_other_tiers),
        calibration=testbed_items("calibration", args.calibration_problems, seed=args.seed + 1),
        test=testbed_items("test", args.problems, seed=args.seed),
        verify=lambda q, prior, step: verifier.verify(q, "", prior, step), seeds=args.seeds, alpha=args.alpha if args.alpha is not None else 0.02,
        prices=prices, concurrency=args.concurrency, frontier=args.frontier,
    )
    files = write_outputs(report, args.out)
    print(markdown_table(report), file=sys.stderr)
    return files


def _bench_tiers(args: argparse.Namespace) -> dict:
    """The testbed's 2-tier against 3-tier routers (``training.bench_tiers``)."""
    from stepgraph.training.bench.bench_tiers import TierBenchArgs, main

    if args.config is not None:
        raise ConfigError("--tiers 3 runs on the shipped testbed models; it takes no --config.")
    extra = dict(spec.split("=", 1) for spec in args.extra_policy if "=" in spec)
    if len(extra) != len(args.extra_policy):
        raise ConfigError(f"--extra-policy takes NAME=DIR, got {args.extra_policy}.")
    cpo = {"warm_start": args.warm_start, "steps": args.cpo_steps}
    alpha = args.alpha if args.alpha is not None else 0.02
    if 0 < args.calibration_runs < episodes_needed(alpha):
        raise ConfigError(f"--calibration-runs {args.calibration_runs} cannot certify α = {alpha}: split conformal needs at least "
                          f"{episodes_needed(alpha)} calibration problems (or 0: κ from the calibration traces).")
    report = main(TierBenchArgs(out=args.out or Path("runs/tiers"), train_problems=args.train_problems,
                                calibration_problems=args.calibration_problems, problems=args.problems, seeds=args.seeds,
                                seed=args.seed, alpha=alpha, cpo=cpo,
                                allocator=args.allocator, combined_allocator=args.combined_allocator,
                                shipped_policy=args.policy or DEFAULT_POLICY_DIR,
                                extra_policies={k: Path(v) for k, v in extra.items()}, calibration_runs=args.calibration_runs,
                                frontier=args.frontier))
    print(Path(report["table"]).read_text(), file=sys.stderr)
    return report


def _bench_from_spec(spec: RunSpec, args: argparse.Namespace) -> dict:
    from stepgraph.training.bench.bench import markdown_table, run_bench, write_outputs

    store_path, out = args.store or spec.paths.store, args.out or spec.paths.bench
    with TraceStore(store_path, create=False) as store:
        episodes = list(store.episodes(split="train"))
    if not episodes:
        raise StepgraphError(f"{redact(store_path)} holds no train episodes; run `stepgraph collect --config {spec.source}` first.")
    tiers = spec.build_tiers()
    try:
        calibration, test = spec.items("calibration"), spec.items("test")
        if args.problems:
            calibration, test = calibration[: args.calibration_problems], test[: args.problems]
        if not calibration or not test:
            raise ConfigError(f"{spec.source}: bench needs calibration and test questions (data.splits).")
        policy = load_gate_artifact(args.policy, tiers, args.allow_other_tiers) if args.policy else spec.build_gate(tiers)
        verify, no_oracle = None, f"{spec.source} has no exact step verifier (verifier.kind = {spec.verifier.kind!r}; the oracle needs 'testbed')"
        if spec.verifier.kind == "testbed":  # the oracle needs an exact verifier; a rollout oracle would cost k runs per step
            exact = spec.build_verifier(tiers)
            verify = lambda q, prior, step: exact.verify(q, "", prior, step)
        report = run_bench(tiers, train_episodes=episodes, policy=policy, calibration=calibration, test=test, verify=verify,
                           seeds=args.seeds, alpha=args.alpha if args.alpha is not None else spec.alpha, prices=spec.prices(),
                           context=spec.context(), concurrency=args.concurrency, threshold_feature=spec.collect.feature,
                           no_oracle_reason=no_oracle, frontier=args.frontier)
    finally:
        close_pair(tiers)
    files = write_outputs(report, out)
    print(markdown_table(report), file=sys.stderr)
    return files


def _single_threaded(handler: Callable[[argparse.Namespace], dict]) -> Callable[[argparse.Namespace], dict]:
    """Run a handler with one torch thread: the shipped artifacts were made so, and are reproduced bit for bit."""

    def run(args: argparse.Namespace) -> dict:
        import torch

        torch.set_num_threads(1)
        return handler(args)

    return run


def _add_spec_options(parser: argparse.ArgumentParser, *, concurrency: bool = True, data: bool = True) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="SPEC",
                        help="run spec (TOML): tiers, data, verifier, gate, alpha, sampling, paths (default: the testbed)")
    if data:
        parser.add_argument("--skip-bad-rows", action="store_true",
                            help="with --config: skip data rows without a question or answer, malformed or with a repeated id, counted on "
                                 "stderr (default: refuse the file, naming the line; run spec: data.skip_bad_rows)")
    if concurrency:
        parser.add_argument("--concurrency", "--workers", type=in_range(int, 1), default=1, metavar="N",
                            help="questions run at once (collect: each worker with its own models) (default: %(default)s)")


def _add_routing_options(parser: argparse.ArgumentParser, when: str) -> None:
    """``--escalate-to`` and ``--tier-offsets``: the policy's ``routing`` (``PolicyArtifact.with_routing``)."""
    parser.add_argument("--escalate-to", choices=["likeliest", "next"], default=None,
                        help=f"{when}, a K-tier policy: send an escalated step to the stronger tier the policy finds likeliest, "
                             "or always to the next tier up (default: as the policy records, else likeliest)")
    parser.add_argument("--tier-offsets", type=in_range(float), nargs="+", default=None, metavar="X",
                        help=f"{when}: per deciding tier, cheapest first, subtracted from its log-odds before the comparison "
                             "with κ (e.g. 0 1.5: the mid tier needs more doubt before it pays for the target) (default: as "
                             "recorded, else 0)")


def add_commands(sub: Any) -> None:
    """Add collect, train, refine, calibrate, evaluate and bench to the ``stepgraph`` CLI's subparsers.

    Each handler returns a dict that the CLI prints as JSON on stdout (progress goes to stderr).
    """
    c = sub.add_parser("collect", help="run the graph with an exploring gate and store traces (resumable)",
                       description="Run the graph over a split's questions with an exploring behaviour gate and store traces. "
                       "A killed run resumes: questions already in the store are skipped.")
    _add_spec_options(c)
    c.add_argument("--store", type=store_location, default=None, help="trace store: a SQLite file or a postgresql:// URL (default: the spec's paths.store, else runs/traces.sqlite)")
    c.add_argument("--split", default="train", choices=["train", "calibration", "test"], help="data split (default: %(default)s)")
    c.add_argument("--problems", type=in_range(int, 1), default=400, help="testbed: problems to collect (default: %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="testbed: problem and sampling seed (default: %(default)s)")
    c.add_argument("--threshold", type=in_range(float), default=0.9, help="testbed: behaviour gate's confidence threshold (default: %(default)s)")
    c.add_argument("--feature", default="api_confidence", choices=["api_confidence", "logit_confidence"],
                   help="testbed: confidence feature of the behaviour gate (default: %(default)s)")
    c.add_argument("--epsilon", type=in_range(float, 0, 1), default=0.3, help="testbed: behaviour gate's exploration rate (default: %(default)s)")
    c.add_argument("--temperature", type=in_range(float, 0), default=DEFAULT_TEMPERATURE, help="testbed: sampling temperature (default: %(default)s)")
    c.add_argument("--record-tiers", action="store_true",
                   help="also record every tier's step and verdict from each prefix, which the K-tier policy trains on "
                        "(`stepgraph train` on such a store); costs one call per tier and step")
    c.add_argument("--tiers", type=int, choices=[2, 3], default=None,
                   help="testbed: 2 (draft, target) or 3 (draft, mid, target; needs --record-tiers) shipped tiers (default: 2)")
    c.set_defaults(func=_single_threaded(_collect))

    t = sub.add_parser("train", help="train π and κ by CPO on the stored traces and write the policy artifact",
                       description="Train the routing policy by CPO on stored traces, calibrate κ, write the artifact.")
    _add_spec_options(t, concurrency=False, data=False)
    t.add_argument("--store", type=store_location, default=None, help="trace store: a SQLite file or a postgresql:// URL (default: the spec's paths.store, else runs/traces.sqlite)")
    t.add_argument("--split", default="train", help="which stored split to train on (default: %(default)s)")
    t.add_argument("--calibration-split", default="calibration",
                   help="stored split whose episodes calibrate κ after training; '' keeps the online κ (default: %(default)s)")
    t.add_argument("--out", type=Path, default=None, help="artifact directory (default: the spec's paths.policy, else runs/policy)")
    t.add_argument("--ignore-feature", action="append", default=[], choices=FEATURE_SCHEMA.names, metavar="NAME",
                   help="hide a feature from the policy, for a backend that does not report it, e.g. api_confidence "
                        "on a vLLM engine with raw logits (repeatable; choices: %(choices)s)")
    t.add_argument("--alpha", type=float, default=None,
                   help="allowed miss rate: coverage must be at least 1 - alpha "
                        f"(default: the spec's alpha, else {CPOArgs.alpha}; K-tier: {TierCPOArgs.alpha})")
    add_dataclass_options(t, CPOArgs, skip=("alpha",), variant=(TierCPOArgs, "K-tier"))
    add_dataclass_options(t, TierCPOArgs, skip=tuple(f.name for f in dataclasses.fields(CPOArgs)))
    t.add_argument("--tier-policy", action="store_true",
                   help="train the K-tier policy (format stepgraph.tier_policy) on traces collected with --record-tiers; "
                        "the default when the store records more than two tiers")
    t.add_argument("--columns", type=int, nargs="+", default=None, metavar="TIER",
                   help="K-tier: the recorded tiers to route between, cheapest first, e.g. 0 2 for draft -> target on "
                        "draft, mid, target traces (implies --tier-policy; default: all)")
    t.add_argument("--allocator", action="store_true",
                   help="train the ex-ante allocator (supervised, then CPO, then calibrated) instead of the policy; "
                        "--out defaults to runs/allocator; --steps sets the RL stage (try 200)")
    t.add_argument("--allocator-gate", type=Path, default=None, metavar="DIR",
                   help="allocator: calibrate κ for the combination with this post-hoc policy artifact (default: the allocator alone)")
    t.add_argument("--allocator-columns", type=int, nargs="+", default=None, metavar="K",
                   help="allocator, on traces with every tier's step: the recorded tiers to allocate among, cheapest "
                        "first, e.g. 0 2 (default: all recorded tiers)")
    t.add_argument("--supervised-epochs", type=int, default=100, help="allocator: supervised stage's full-batch epochs (default: %(default)s)")
    t.add_argument("--supervised-lr", type=float, default=1e-2, help="allocator: supervised stage's learning rate (default: %(default)s)")
    add_domain_options(t)
    t.set_defaults(func=_single_threaded(_train))

    k = sub.add_parser("calibrate", help="set a gate's threshold so held-out coverage meets 1 - alpha; print the alpha curve",
                       description="Set the threshold of a score-based gate (policy κ, confidence threshold, STEER, RSD's PRM) on the "
                       "stored calibration episodes so that coverage meets 1 - alpha (split conformal, replayed with the "
                       "local-verification surrogate; no model calls), write a gate artifact and print the alpha -> "
                       "(coverage, cost) curve. Re-calibrates a policy for a new alpha without retraining.")
    _add_spec_options(k)
    k.add_argument("--gate", choices=["policy", "threshold", "steer", "prm"], default=None,
                   help="gate to calibrate (default: the spec's gate if score-based, else policy)")
    k.add_argument("--alpha", type=in_range(float, 0, 1, exclusive=True), default=None, help=f"allowed miss rate (default: the spec's alpha, else {CPOArgs.alpha})")
    k.add_argument("--policy", type=Path, default=None, help="policy artifact to re-calibrate (default: the spec's paths.policy, else runs/policy)")
    k.add_argument("--feature", choices=["api_confidence", "logit_confidence"], default=None,
                   help="--gate threshold: confidence feature (default: the spec's collect.feature, else api_confidence)")
    k.add_argument("--store", type=store_location, default=None, help="trace store, a SQLite file or a postgresql:// URL (default: the spec's paths.store, else runs/traces.sqlite)")
    k.add_argument("--split", default="calibration", help="stored split to calibrate on (default: %(default)s)")
    k.add_argument("--out", type=Path, default=None, help="gate artifact directory (default: the spec's paths.gate, else runs/gate)")
    k.add_argument("--allow-other-tiers", action="store_true", help="use a policy trained on other tiers than the store's, with a warning")
    k.add_argument("--runs", type=in_range(int, 1), default=None, metavar="N",
                   help="calibrate the policy's κ (2-tier or K-tier) on live runs of N calibration-split problems instead of "
                        "the stored traces: each problem is run at every κ that changes a decision, beside the strongest tier "
                        "alone; no store needed (testbed: the shipped tiers the policy records)")
    k.add_argument("--delta", type=in_range(float, 0.0, 1.0, exclusive=True), default=None, metavar="D",
                   help="with --runs: the PAC bound instead of split conformal: κ keeps coverage ≥ 1 - alpha with probability "
                        "≥ 1 - D over calibration sets (it allows fewer misses: 4 of 400 at alpha 0.02, D 0.1, against 7) "
                        "(default: none, split conformal: 1 - alpha on average)")
    k.add_argument("--seed", type=int, default=0, help="testbed, --runs: problem and sampling seed (default: %(default)s)")
    _add_routing_options(k, "with --runs")
    k.add_argument("--domain-only", action="store_true",
                   help=f"only (re)compute the policy's out-of-domain threshold on calibration questions (--runs N of them, default "
                        f"{DOMAIN_QUESTIONS}; the spec's calibration split, or the testbed's) and write the policy to --out with κ and "
                        "weights unchanged")
    add_domain_options(k)
    k.set_defaults(func=_single_threaded(_calibrate))

    r = sub.add_parser("refine", help="fit a policy to its own routed runs on train problems (on-policy), before calibrating κ",
                       description="Run the router with the policy on train-split problems, label every decision it made with the "
                       "step verifier, and fit the network's log-odds of escalation per deciding tier to those labels, starting "
                       "from its weights (one round of on-policy data, as in DAgger). Writes a policy without a guarantee: "
                       "calibrate its κ next with `stepgraph calibrate --runs N`.")
    _add_spec_options(r, concurrency=False)
    r.add_argument("--policy", type=Path, default=None, help="policy artifact to refine (default: the spec's paths.policy, else runs/policy)")
    r.add_argument("--out", type=Path, required=True, help="directory of the refined policy")
    r.add_argument("--split", default="train", help="split whose problems are run (default: %(default)s)")
    r.add_argument("--problems", type=in_range(int, 1), default=800, help="problems to run, at most (default: %(default)s)")
    r.add_argument("--seed", type=int, default=0, help="testbed: problem and sampling seed (default: %(default)s)")
    r.add_argument("--allow-other-tiers", action="store_true", help="use a policy trained on other tiers, with a warning")
    _add_routing_options(r, "for the runs and the refined policy")
    add_dataclass_options(r, RefineArgs, skip=("seed",))  # --seed seeds the problems, the runs and the fit
    r.set_defaults(func=_single_threaded(_refine))

    e = sub.add_parser("evaluate", help="run the trained gate live in the graph against target-only and draft-only",
                       description="Run gates live in the graph beside target-only and draft-only on the same problems.")
    _add_spec_options(e)
    e.add_argument("--policy", type=Path, nargs="+", default=None,
                   help="policy or calibrated gate directories, each a row (default: the spec's gate, else runs/policy)")
    e.add_argument("--backend", default="transformers", choices=BACKENDS,
                   help="testbed: run the shipped tiers the policies record (the pair or draft, mid and target) on local "
                        "transformers or on vLLM engines (default: %(default)s)")
    e.add_argument("--splits", nargs="+", default=["calibration", "test"], help="data splits (default: calibration test)")
    e.add_argument("--problems", type=in_range(int, 1), default=200, help="problems per split, at most (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0, help="testbed: problem and sampling seed (default: %(default)s)")
    e.add_argument("--temperature", type=in_range(float, 0), default=DEFAULT_TEMPERATURE, help="testbed: sampling temperature (default: %(default)s)")
    e.add_argument("--allow-other-tiers", action="store_true", help="use an artifact trained on other tiers, with a warning")
    e.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="journal finished rows under DIR and reuse them, so a killed evaluation resumes; one DIR per "
                        "evaluation (same spec, gates and options) (default: no journal)")
    e.set_defaults(func=_single_threaded(_evaluate))

    b = sub.add_parser("bench", help="every method side by side on the same problems: table, CSV/JSON, Pareto plot",
                       description="Run every routing method on the same problems and seeds; write table, CSV/JSON and plot. "
                       "Each score-based method (confidence thresholds, STEER, RSD, SpecReason, the policy's κ) is tuned on the "
                       "calibration problems on the paper's 0.1 grid, at its exact breakpoints, and at the policy's calibration "
                       "coverage; every row is compared with the policy's on the same problems and seeds (paired bootstrap "
                       "interval of the cost difference, McNemar on misses).")
    _add_spec_options(b)
    b.add_argument("--store", type=store_location, default=None,
                   help="trace store whose train episodes fit STEER and the PRM (default: the spec's paths.store, else runs/traces.sqlite)")
    b.add_argument("--policy", type=Path, default=None, help="CPO policy or calibrated gate; --tiers 3: the 2-tier policy of the shipped-policy rows (default: the spec's gate, else the shipped policy)")
    b.add_argument("--out", type=Path, default=None, help="output directory (default: the spec's paths.bench, else runs/bench)")
    b.add_argument("--problems", type=in_range(int, 1), default=200, help="test-split problems, at most (default: %(default)s)")
    b.add_argument("--calibration-problems", type=in_range(int, 1), default=100, help="calibration problems that choose every threshold (default: %(default)s)")
    b.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds, each a full run (default: 0 1 2)")
    b.add_argument("--seed", type=int, default=0, help="testbed: problem-selection seed (default: %(default)s)")
    b.add_argument("--alpha", type=in_range(float, 0, 1, exclusive=True), default=None, help="coverage target 1 - alpha for threshold selection (default: the spec's, else 0.02)")
    b.add_argument("--input-price", type=in_range(float, 0), default=0.40, help="testbed: $ per 1M input tokens (default: %(default)s)")
    b.add_argument("--cached-price", type=in_range(float, 0), default=0.10, help="testbed: $ per 1M cached input tokens (default: %(default)s)")
    b.add_argument("--output-price", type=in_range(float, 0), default=1.60, help="testbed: $ per 1M output tokens (default: %(default)s)")
    b.add_argument("--allow-other-tiers", action="store_true", help="use an artifact trained on other tiers, with a warning")
    b.add_argument("--tiers", type=int, choices=[2, 3], default=2,
                   help="3: collect traces on the shipped draft, mid and target, train a 3-tier and a 2-tier K-tier policy "
                        "and a 3-tier allocator (alone, and before the 3-tier policy) at --alpha, calibrate the policies' κ on "
                        "runs, bench them against each tier alone and compare them at matched coverage (default: %(default)s)")
    b.add_argument("--train-problems", type=in_range(int, 1), default=1200, help="--tiers 3: train problems to collect (default: %(default)s)")
    b.add_argument("--warm-start", type=in_range(int, 0), default=300,
                   help="--tiers 3: supervised steps on 'cheapest verified tier' labels before CPO (default: %(default)s)")
    b.add_argument("--cpo-steps", type=in_range(int, 0), default=0,
                   help="--tiers 3: K-tier CPO updates after the warm start; 0: the supervised policy alone, which CPO "
                        "has not improved on the testbed (default: %(default)s)")
    b.add_argument("--allocator", type=Path, default=None, help="--tiers 3: a 2-tier allocator artifact; adds its rows on draft -> target")
    b.add_argument("--combined-allocator", type=Path, default=None,
                   help="--tiers 3: the allocator calibrated with the shipped policy, for the allocate-then-check row")
    b.add_argument("--extra-policy", action="append", default=[], metavar="NAME=DIR",
                   help="--tiers 3: another trained tier policy to bench as row NAME (names ending in 2-tier compete as 2-tier routers)")
    b.add_argument("--calibration-runs", type=in_range(int, 0), default=400,
                   help="--tiers 3: calibration problems run live to calibrate κ of the trained policies and of the shipped one "
                        "(a row of its own); 0: κ from the replayed calibration traces (default: %(default)s)")
    b.add_argument("--frontier", type=in_range(float, 0, 1), nargs="*", default=None, metavar="COVERAGE",
                   help="coverage levels at which test cost/coverage frontiers (each κ or threshold chosen on the test runs) "
                        "are compared: --tiers 3 the routers'; else the policy's against the hand rule with a confidence "
                        "threshold, and the policy's at the hand rule's own coverage; none: skip those sweeps "
                        "(default: --tiers 3 0.97 0.98 0.99, else none)")
    b.set_defaults(func=_single_threaded(_bench))
