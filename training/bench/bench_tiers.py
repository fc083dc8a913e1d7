"""Two tiers against three on the same problems and seeds: ``stepgraph bench --tiers 3``.

The pipeline, each stage resumable or cheap to redo:

1. collect train and calibration traces on the shipped draft → mid → target tiers, recording every
   tier's step and verdict from each prefix (``collect(..., record_tiers=True)``);
2. train two K-tier policies on them at the same α (by default the supervised warm start alone):
   over all three tiers, and over draft → target only (the same traces, the mid tier's column
   left out); κ of each is calibrated on the calibration traces, then again on live runs of
   ``calibration_runs`` calibration problems (``live_kappa``), as is the shipped policy's κ for a
   row of its own;
3. run on the test problems, for every seed: each tier alone, the shipped 2-tier policy, the
   2-tier and the 3-tier policies. Rows: accuracy, coverage (right, or the target alone
   wrong on the same problem and seed), generated and total (generated + prefill) FLOPs, and the
   share of steps each tier wrote; the 3-tier router's FLOPs minus the best 2-tier router's, per
   problem, with a paired bootstrap interval;
4. at matched coverage: every policy swept over κ on the test runs, and the 3-tier router's
   cheapest κ at each ``frontier`` level against each 2-tier router's (``matched_coverage``).

Rows for other routers are added with ``extra_gates`` (a gate on some of the tiers) and
``allocators`` (an ex-ante allocator before the gate, ``bench_allocator.allocator_rows``). The
allocator rows run the 2-tier allocator on draft → target: alone (every allocated step kept) and
followed by the shipped policy's post-hoc check. The 3-tier allocator rows (``train_tier_allocators``)
train the allocator on the same traces over draft → mid → target: alone, and with its κ calibrated
for the 3-tier policy as post-hoc gate.

    stepgraph bench --tiers 3 --problems 200 --seeds 0 1 --out runs/tiers
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stepgraph.training.bench.bench import bootstrap, paired_difference, run_rows, summarize, with_threshold
from stepgraph.training.bench.bench_allocator import allocator_rows
from stepgraph.training.calibration.live_kappa import calibrate_kappa, kappa_tunable, with_live_kappa
from stepgraph.training.calibration.tuning import Piece, cheapest_rows, sweep
from stepgraph.training.collection.collect import collect, testbed_items
from stepgraph.training.collection.runs import add_coverage, strongest_alone
from stepgraph.training.collection.verifiers import TestbedVerifier
from stepgraph.training.data.store import TraceStore
from stepgraph.training.learning.cpo_tiers import TierCPOArgs, train_tier_policy
from tqdm import tqdm

from stepgraph.artifacts.policy import PolicyArtifact
from stepgraph.defaults import DEFAULT_POLICY_DIR
from stepgraph.models.base import StepModel
from stepgraph.routing.allocator import Allocator
from stepgraph.routing.gates import AlwaysDraftGate, PolicyGate
from stepgraph.routing.gates.base import Gate
from stepgraph.testbed import close_pair, load_tiers, testbed_task


@dataclass
class TierBenchArgs:
    out: Path = Path("runs/tiers")
    """where the trace store, the two policies and the results go"""
    train_problems: int = 1200
    """train-split problems to collect"""
    calibration_problems: int = 200
    """calibration-split problems to collect (κ is calibrated on them)"""
    problems: int = 200
    """test-split problems to bench on"""
    seeds: Sequence[int] = (0, 1)
    """sampling seeds, each a full run of every row"""
    seed: int = 0
    """problem-selection seed"""
    alpha: float = 0.02
    """coverage target 1 - alpha of both trained policies"""
    cpo: dict[str, Any] = field(default_factory=lambda: {"warm_start": 300, "steps": 0})
    """TierCPOArgs overrides; the default is the supervised warm start alone (CPO after it has not helped here)"""
    allocator: Path | None = None
    """a 2-tier (draft → target) allocator artifact: adds the allocator-alone row"""
    combined_allocator: Path | None = None
    """the allocator calibrated with the shipped policy as post-hoc gate (default: ``allocator``): adds that row"""
    shipped_policy: Path = DEFAULT_POLICY_DIR
    """the 2-tier policy of the shipped-policy rows (``stepgraph bench --tiers 3 --policy``)"""
    extra_policies: dict[str, Path] = field(default_factory=dict)
    """more trained tier policies to bench: row name → artifact (3 tiers: draft → mid → target; 2: draft → target)"""
    calibration_runs: int = 400
    """calibration-split problems run live to calibrate κ of the trained policies (and of the shipped one, as
    another row); 0: keep κ calibrated on the replayed calibration traces"""
    frontier: Sequence[float] = (0.97, 0.98, 0.99)
    """coverage levels of the matched-coverage comparison on the test runs (empty: none)"""
    allocator_cpo: dict[str, Any] = field(default_factory=lambda: {"steps": 200, "batch_size": 16})
    """CPOArgs overrides of the 3-tier allocators' RL stage (alpha is ``alpha``)"""


def collect_tier_traces(store: TraceStore, make_tiers, args: TierBenchArgs) -> dict[str, Any]:
    """Train and calibration traces with every tier's step, on the testbed's splits."""
    reports: dict[str, Any] = {}
    splits: tuple[tuple[str, int, int], ...] = (("train", args.train_problems, args.seed),
                                                      ("calibration", args.calibration_problems, args.seed + 1))
    for split, n, seed in splits:
        items = testbed_items(split, n, seed=seed)
        if not {item.problem_id for item in items} - store.problem_ids():
            # Nothing to collect: reuse the traces as they are, also those of an older feature schema (``collect``
            # refuses to add new traces to such a store; the tier policy ignores features its traces never report).
            reports[split] = {"reused": n}
            continue
        verifier = TestbedVerifier(testbed_task().generate(split, n, seed=seed))
        reports[split] = collect(store, items, make_tiers, verifier, split=split, seed=seed, record_tiers=True)
    return reports


def train_policies(store: TraceStore, args: TierBenchArgs) -> dict[str, Path]:
    """The 3-tier and the draft → target CPO policies on the same traces, saved under ``args.out``.

    A policy already there, trained with the same settings, columns and number of episodes, is reused
    (training is seeded, so it would come out the same).
    """
    tiers = store.meta("models")
    train, calibration = list(store.episodes("train")), list(store.episodes("calibration"))
    cpo_args = TierCPOArgs(alpha=args.alpha, **args.cpo)
    paths = {}
    for name, columns in (("policy-3-tier", [0, 1, 2]), ("policy-2-tier", [0, 2])):
        if _trained_alike(args.out / name, cpo_args, columns, len([e for e in train if e.steps]), bool(args.calibration_runs)):
            paths[name] = args.out / name
            continue
        artifact, _ = train_tier_policy(train, tiers, cpo_args, columns=columns, calibration=calibration)
        paths[name] = artifact.save(args.out / name)
    return paths


def _trained_alike(directory: Path, cpo_args: TierCPOArgs, columns: Sequence[int], episodes: int, kappa_from_runs: bool) -> bool:
    if not (directory / "policy.json").is_file():
        return False
    training = json.loads((directory / "policy.json").read_text()).get("training", {})
    if training.get("kappa_from") == "calibration runs" and not kappa_from_runs:
        return False  # its κ was replaced by one from runs: train again for the trace-calibrated one
    return (training.get("args") == json.loads(json.dumps(asdict(cpo_args))) and training.get("columns") == list(columns)
            and training.get("episodes") == episodes)


def run_tier_bench(tiers: Sequence[StepModel], policies: Mapping[str, Path], items: Sequence, *, seeds: Sequence[int],
                   shipped_policy: Path | None = DEFAULT_POLICY_DIR, extra_gates: Mapping[str, tuple[Sequence[int], Gate]] = {},
                   allocators: Mapping[str, tuple[Sequence[int], Gate, Allocator]] = {},
                   progress: bool = True) -> dict[str, Any]:
    """Every row on the same items and seeds; ``tiers`` are draft, mid, target.

    ``extra_gates`` adds rows: name → (the tier indices its graph uses, the gate); ``allocators``
    adds rows of graphs with an allocator: name → (tier indices, the post-hoc gate, the allocator).
    Rows whose name ends in "2-tier" compete for the best 2-tier router.
    """
    draft, mid, target = tiers
    routers: dict[str, tuple[list[StepModel], Gate]] = {
        "draft-alone": ([draft, draft], AlwaysDraftGate()),
        "mid-alone": ([mid, mid], AlwaysDraftGate()),
        "target-alone": ([target, target], AlwaysDraftGate()),
        "policy-2-tier": ([draft, target], PolicyGate.from_path(policies["policy-2-tier"])),
        "policy-3-tier": ([draft, mid, target], PolicyGate.from_path(policies["policy-3-tier"])),
    }
    if shipped_policy is not None and (shipped_policy / "policy.json").is_file():
        routers["shipped-policy-2-tier"] = ([draft, target], PolicyGate.from_path(shipped_policy))
    for name, (indices, gate) in extra_gates.items():
        routers[name] = ([tiers[i] for i in indices], gate)
    allocated = {name: alloc for name, (_, _, alloc) in allocators.items()}
    for name, (indices, gate, _) in allocators.items():
        routers[name] = ([tiers[i] for i in indices], gate)

    def answer(name: str, models: list[StepModel], gate: Gate, seed: int) -> list[dict[str, Any]]:
        if name not in allocated:
            return run_rows(models, gate, items, seed=seed, prices=None)
        method_rows = allocator_rows(models, gate, items, seed=seed, allocator=allocated[name])  # same seed rules as run_rows
        for row in method_rows:
            row["steps_by_tier"] = row["tier_steps"]
        return method_rows

    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in tqdm(seeds, desc="seeds", disable=not progress):
        per_seed = {name: answer(name, models, gate, seed)
                    for name, (models, gate) in tqdm(routers.items(), desc=f"seed {seed}", leave=False, disable=not progress)}
        for name, method_rows in per_seed.items():
            names = [m.name for m in routers[name][0]]
            for row in add_coverage(method_rows, per_seed["target-alone"]):
                row["seed"] = seed
                row["total_flops"] = row["flops"] + row["prefill_flops"]
                # The share of steps per shipped model (a tier-alone graph writes every step with its tier 0 model).
                row["steps_by_model"] = {m.name: sum(n for n, model in zip(row["steps_by_tier"], names) if model == m.name)
                                         for m in tiers}
            rows.setdefault(name, []).extend(method_rows)
    summary = {}
    for name, method_rows in rows.items():
        s = summarize(method_rows)
        s["total_flops"] = dict(zip(("mean", "low", "high"), bootstrap([r["total_flops"] for r in method_rows])))
        steps = {m.name: sum(r["steps_by_model"][m.name] for r in method_rows) for m in tiers}
        s["tier_share"] = {k: v / max(1, sum(steps.values())) for k, v in steps.items()}
        summary[name] = s
    two_tier = [n for n in rows if n.endswith("2-tier")]
    feasible = [n for n in two_tier if summary[n]["covered"]["mean"] >= 0.97] or two_tier
    best = min(feasible, key=lambda n: summary[n]["flops"]["mean"])
    comparison = {"best_2_tier": best, "flops_3_minus_best_2": paired_difference(rows["policy-3-tier"], rows[best]),
                  "total_flops_3_minus_best_2": paired_difference(rows["policy-3-tier"], rows[best], "total_flops"),
                  "coverage_3_minus_best_2": paired_difference(rows["policy-3-tier"], rows[best], "covered"),
                  "3_minus_each_2_tier": {n: {m: paired_difference(rows["policy-3-tier"], rows[n], m)
                                              for m in ("flops", "total_flops", "covered")} for n in two_tier}}
    return {"seeds": list(seeds), "problems": len(items), "summary": summary, "comparison": comparison, "rows": rows}


ORDER = ["draft-alone", "mid-alone", "target-alone", "shipped-policy-2-tier", "shipped-policy-live-kappa-2-tier", "policy-2-tier",
         "allocator-2-tier", "allocator+shipped-policy-2-tier", "policy-3-tier", "allocator-3-tier", "allocator+policy-3-tier"]


def markdown_table(report: Mapping[str, Any], tier_names: Sequence[str] = ("draft", "mid", "target")) -> str:
    """One row per router: accuracy, coverage, generated and total MFLOPs, steps per tier."""

    def cell(stat: Mapping[str, float], scale: float = 1.0, digits: int = 3) -> str:
        return f"{stat['mean'] / scale:.{digits}f} [{stat['low'] / scale:.{digits}f}, {stat['high'] / scale:.{digits}f}]"

    lines = ["| router | accuracy | coverage | generated MFLOPs | total MFLOPs | steps by " + " / ".join(tier_names) + " |",
             "|---|---|---|---|---|---|"]
    names = [n for n in ORDER if n in report["summary"]] + [n for n in report["summary"] if n not in ORDER]
    for name in names:
        s = report["summary"][name]
        shares = " / ".join(f"{s['tier_share'].get(t, 0.0):.2f}" for t in tier_names)
        lines.append(f"| {name} | {cell(s['correct'])} | {cell(s['covered'])} | {cell(s['flops'], 1e6, 2)} "
                     f"| {cell(s['total_flops'], 1e6, 2)} | {shares} |")
    c = report["comparison"]
    lines.append("")
    lines.append(f"3-tier minus {c['best_2_tier']} (paired, per problem and seed): generated MFLOPs "
                 f"{cell(c['flops_3_minus_best_2'], 1e6, 3)}, total MFLOPs {cell(c['total_flops_3_minus_best_2'], 1e6, 3)}, "
                 f"coverage {cell(c['coverage_3_minus_best_2'])}")
    for name, d in c.get("3_minus_each_2_tier", {}).items():
        lines.append(f"- 3-tier minus {name}: generated MFLOPs {cell(d['flops'], 1e6, 3)}, total MFLOPs "
                     f"{cell(d['total_flops'], 1e6, 3)}, coverage {cell(d['covered'])}")
    if report.get("calibration_runs"):
        lines += ["", "κ calibrated on live runs of calibration problems (split conformal, misses ≤ ⌊α(n + 1)⌋ − 1):"]
        for name, c in report["calibration_runs"].items():
            point = c["calibration"]
            held = "" if c["guarantee"]["type"] != "none" else " — no κ meets the bound: it escalates all it can, guarantee none"
            lines.append(f"- {name}: κ = {c['threshold']:.4g}, calibration coverage {point['covered']:.3f} "
                         f"({point['misses']} misses of {point['problems']}), {point['flops'] / 1e6:.2f} MFLOPs{held}")
    for level, m in report.get("matched_coverage", {}).items():
        points = ", ".join(f"{n} {p['flops'] / 1e6:.2f} MFLOPs at {p['covered']:.3f}" for n, p in m["points"].items())
        lines += ["", (f"Matched coverage ≥ {level} (each router at its cheapest κ on these test runs: the frontier; "
                       f"generated FLOPs only, as sweeps reuse the prefix cache): {points}")]
        for name, d in m["3_minus_each_2_tier"].items():
            lines.append(f"- 3-tier minus {name}: generated MFLOPs {cell(d['flops'], 1e6, 3)}, coverage {cell(d['covered'])}")
    return "\n".join(lines) + "\n"


def allocator_routers(tiers: Sequence[StepModel], args: TierBenchArgs) -> dict[str, tuple[Sequence[int], Gate, Allocator]]:
    """The allocator rows on draft → target (tiers 0 and 2): alone, and followed by the shipped policy."""
    from stepgraph.routing.learned_allocator import LearnedAllocator

    if args.allocator is None:
        return {}
    pair = [{"name": tiers[i].name, "parameters": tiers[i].n_params} for i in (0, 2)]  # refuses an allocator of other tiers
    combined = LearnedAllocator.from_path(args.combined_allocator or args.allocator, pair)
    return {"allocator-2-tier": ((0, 2), AlwaysDraftGate(), LearnedAllocator.from_path(args.allocator, pair)),
            "allocator+shipped-policy-2-tier": ((0, 2), PolicyGate.from_path(args.shipped_policy), combined)}


# --- κ from live runs, and the comparison at matched coverage -------------------------------------


def sweep_router(tiers: Sequence[StepModel], indices: Sequence[int], gate: PolicyGate, items: Sequence, *,
                 seeds: Sequence[int], target_rows: Mapping[int, Sequence[Mapping[str, Any]]], desc: str) -> list[list[Piece]]:
    """Every problem's run at every κ (``tuning.sweep``), one swept problem per item and seed."""
    models = [tiers[i] for i in indices]
    return [pieces for seed in seeds
            for pieces in sweep(models, kappa_tunable(gate), items, target_rows[seed], seed=seed, desc=f"{desc} seed {seed}",
                                progress=True)]


def calibrate_routers(tiers: Sequence[StepModel], routers: Mapping[str, tuple[Sequence[int], PolicyGate]], items: Sequence,
                      alpha: float, seed: int) -> dict[str, dict[str, Any]]:
    """κ of each router from live runs of the calibration problems (``live_kappa.calibrate_kappa``); the strongest
    tier alone, which coverage is measured against, runs once for all of them."""
    alone_tiers, alone_gate, _ = strongest_alone(tiers)
    targets = run_rows(alone_tiers, alone_gate, items, seed=seed, prices=None)
    return {name: calibrate_kappa([tiers[i] for i in indices], gate, items, alphas=[alpha], seed=seed, targets=targets)[alpha]
            for name, (indices, gate) in routers.items()}


def matched_coverage(pieces: Mapping[str, Sequence[Sequence[Piece]]], levels: Sequence[float], three_tier: str = "policy-3-tier"
                     ) -> dict[str, Any]:
    """Each router at its cheapest κ with test coverage ≥ each level, and the 3-tier router minus each 2-tier one there.

    κ is chosen on the very runs it is scored on, so the numbers are each router's cost/coverage
    frontier, not what a deployed router gets; the paired intervals compare the frontiers at equal
    coverage, as the issue's target asks. Generated FLOPs only: a sweep runs each problem many
    times in a row, so a local model's prefix cache makes the later runs' prefill look cheaper.
    """
    out: dict[str, Any] = {}
    for level in levels:
        chosen = {name: cheapest_rows(p, level) for name, p in pieces.items()}
        points, rows = {n: point for n, (point, _) in chosen.items()}, {n: r for n, (_, r) in chosen.items()}
        out[f"{level:g}"] = {
            "points": points,
            "3_minus_each_2_tier": {n: {m: paired_difference(rows[three_tier], rows[n], m) for m in ("flops", "covered")}
                                    for n in pieces if n != three_tier},
        }
    return out


TIER_ALLOCATORS = {"allocator-3-tier": None, "allocator+policy-3-tier": "policy-3-tier"}
"""The 3-tier allocator rows: name → the trained policy it is combined with (None: alone, every allocated step kept)."""


def train_tier_allocators(store: TraceStore, args: TierBenchArgs, policies: Mapping[str, Path]) -> dict[str, Path]:
    """The allocator over draft → mid → target on the bench's traces, alone and with its κ calibrated for the
    combination with the 3-tier policy as post-hoc gate; saved under ``args.out``.

    An allocator already there, trained with the same settings, on as many episodes and (combined) with the
    same policy, is reused.
    """
    from stepgraph.training.learning.allocator import train_allocator
    from stepgraph.training.learning.cpo import CPOArgs

    tiers = store.meta("models")
    train, calibration = list(store.episodes("train")), list(store.episodes("calibration"))
    cpo_args = CPOArgs(**{"alpha": args.alpha, **args.allocator_cpo})
    paths = {}
    for name, policy_name in TIER_ALLOCATORS.items():
        policy = policies[policy_name] if policy_name else None
        stamp = {"args": json.loads(json.dumps(asdict(cpo_args))), "episodes": len([e for e in train if e.steps]),
                 "post_hoc_policy": _policy_stamp(policy)}
        manifest = args.out / name / "allocator.json"
        if manifest.is_file() and all(json.loads(manifest.read_text())["training"].get(k) == v for k, v in stamp.items()):
            paths[name] = args.out / name
            continue
        gate = PolicyGate.from_path(policy) if policy else None
        artifact = train_allocator(train, cpo_args, tiers=tiers, calibration=calibration, gate=gate)
        artifact.training |= stamp
        paths[name] = artifact.save(args.out / name)
    return paths


def _policy_stamp(policy: Path | None) -> dict[str, Any] | None:
    """The post-hoc policy's weights and κ (calibrated on runs after it was trained): a combined allocator is
    calibrated for exactly these."""
    if policy is None:
        return None
    manifest = json.loads((policy / "policy.json").read_text())
    return {"weights_sha256": manifest["weights_sha256"], "kappa": manifest["kappa"]}


def tier_allocator_routers(tiers: Sequence[StepModel], allocators: Mapping[str, Path],
                           policies: Mapping[str, Path]) -> dict[str, tuple[Sequence[int], Gate, Allocator]]:
    """The 3-tier allocator rows: alone, and followed by the 3-tier policy's post-hoc check."""
    from stepgraph.routing.learned_allocator import LearnedAllocator

    described = [{"name": m.name, "parameters": m.n_params} for m in tiers]  # refuses an allocator of other tiers
    return {name: ((0, 1, 2), PolicyGate.from_path(policies[policy]) if policy else AlwaysDraftGate(),
                   LearnedAllocator.from_path(allocators[name], described))
            for name, policy in TIER_ALLOCATORS.items() if name in allocators}


def main(args: TierBenchArgs) -> dict[str, Any]:
    """Collect, train both policies, calibrate κ on runs, bench, compare at matched coverage; write ``results.json``
    and ``table.md`` under ``args.out``."""
    args.out.mkdir(parents=True, exist_ok=True)
    with TraceStore(args.out / "traces.sqlite") as store:
        collected = collect_tier_traces(store, lambda: load_tiers(3), args)
        policies = train_policies(store, args)
    tiers = load_tiers(3)
    try:
        trained = {"policy-3-tier": ((0, 1, 2), PolicyGate.from_path(policies["policy-3-tier"])),
                   "policy-2-tier": ((0, 2), PolicyGate.from_path(policies["policy-2-tier"]))}
        shipped = PolicyGate.from_path(args.shipped_policy)
        live: dict[str, dict[str, Any]] = {}
        if args.calibration_runs:
            calibration_items = testbed_items("calibration", args.calibration_runs, seed=args.seed + 1)
            live = calibrate_routers(tiers, {**trained, "shipped-policy-live-kappa-2-tier": ((0, 2), shipped)}, calibration_items,
                                     args.alpha, seed=args.seed + 1)
            for name, path in policies.items():
                with_live_kappa(PolicyArtifact.load(path), live[name], args.alpha).save(path)
        with TraceStore(args.out / "traces.sqlite") as store:  # the combined allocator is calibrated with the final κ
            allocators = train_tier_allocators(store, args, policies)
        extra = {name: (((0, 1, 2) if PolicyArtifact.load(path).network.n_tiers == 3 else (0, 2)), PolicyGate.from_path(path))
                 for name, path in args.extra_policies.items()}
        if "shipped-policy-live-kappa-2-tier" in live:
            extra["shipped-policy-live-kappa-2-tier"] = ((0, 2), with_threshold(shipped, live["shipped-policy-live-kappa-2-tier"]["threshold"]))
        items = testbed_items("test", args.problems, seed=args.seed)
        report = run_tier_bench(tiers, policies, items, seeds=args.seeds, shipped_policy=args.shipped_policy, extra_gates=extra,
                                allocators=allocator_routers(tiers, args) | tier_allocator_routers(tiers, allocators, policies))
        if args.frontier:
            alone = report["rows"]["target-alone"]  # what coverage is measured against, already run per seed
            targets = {seed: [r for r in alone if r["seed"] == seed] for seed in args.seeds}
            routers = {**{n: (i, PolicyGate.from_path(policies[n])) for n, (i, _) in trained.items()},
                       "shipped-policy-2-tier": ((0, 2), shipped)}
            pieces = {name: sweep_router(tiers, indices, gate, items, seeds=args.seeds, target_rows=targets, desc=f"frontier {name}")
                      for name, (indices, gate) in routers.items()}
            report["matched_coverage"] = matched_coverage(pieces, args.frontier)
    finally:
        close_pair(tiers)
    report["collected"] = collected
    report["calibration_runs"] = live
    report["policies"] = {name: json.loads((path / "policy.json").read_text())["training"] for name, path in policies.items()}
    report["allocators"] = {name: json.loads((path / "allocator.json").read_text())["training"] for name, path in allocators.items()}
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "table.md").write_text(markdown_table(report))
    return {"results": str(args.out / "results.json"), "table": str(args.out / "table.md"), "comparison": report["comparison"]}
