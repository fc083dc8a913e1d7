"""The stages of ``stepgraph regenerate`` (run by ``stepgraph.cli.regenerate``): every artifact and BENCHMARKS number
of the shipped tiers, from scratch, in order.

Each stage is one existing command (``stepgraph collect``, ``train``, ``calibrate``, ``bench``, ``radar ...``,
``bench-allocator``, ``taxonomy``), run in-process on the shipped tiers (``stepgraph.testbed.TIER_DIRS``) and
their task (``testbed_task()``), with its outputs under ``--out``:

- ``traces.sqlite``: 2-tier train and calibration traces;
- ``policies/{default_runs,logits_only,api_only,three_tier}``: the shipped policies (κ calibrated, with the
  out-of-domain ``domain`` field); the shipped ``default`` is ``default_runs``, the trained ``policies/default``
  with κ re-calibrated on live calibration runs (``calibrate --runs``: cheaper at the same α than κ from traces);
  ``three_tier`` is ``tiers/policy-3-tier`` (from ``bench --tiers 3``, which collects its own traces with every
  tier's step) with its domain threshold added; ``three_tier_refined`` is that policy routed to the next tier up with the
  mid tier's log-odds offset by ``Sizes.tier_offsets`` and refined on its own runs (``refine``; with
  ``Sizes.refine_kappa_runs``, refined again at each round's newly calibrated κ: ``three_tier_refined_kappa``,
  ``three_tier_refined_2``, ...); the shipped ``three_tier`` is ``three_tier_runs``, the last round with κ and the
  domain threshold re-calibrated on 1,600 live calibration runs under the PAC bound (``Sizes.tier_kappa_delta``);
- ``gates/{threshold,steer,prm}``: the confidence threshold, STEER's GMM and RSD's PRM calibrated on the traces;
- ``allocator``, ``allocator-combined``, ``bench-allocator.json``: the ex-ante allocator and its bench;
- ``radar/``: RADAR's response matrices, router, difficulty traces and policies, and its bench;
- ``bench/``: the side-by-side bench (exact thresholds, the hand rule, the oracle) on the pair,
  ``bench-3-tier/`` the same on draft → mid → target with the shipped 3-tier policy (the default router),
  ``tiers/``: 2 tiers against 3; ``stages/taxonomy.out``: the draft's error taxonomy table (task v2 only).

A stage that finished wrote ``stages/NAME.json`` (its command line, wall time and result; what it printed, such as
the taxonomy table, is in ``stages/NAME.out``) and is skipped
next time, so an interrupted run resumes; collection stages also resume inside (their stores skip
stored problems). Copy the artifacts into ``stepgraph/testbed/policies`` and the tables into
BENCHMARKS.md by hand.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from stepgraph.features import LOGPROB_FEATURES


@dataclass
class Sizes:
    """The sizes of a regeneration; the defaults are those of the shipped artifacts."""

    train_problems: int = 600
    """2-tier train traces"""
    calibration_problems: int = 400
    """2-tier calibration traces (κ, the thresholds, the out-of-domain threshold)"""
    policy_steps: int = 1000
    """CPO steps of the 2-tier policies"""
    tier_train_problems: int = 1200
    """3-tier train traces (bench --tiers 3)"""
    tier_calibration_problems: int = 200
    """3-tier calibration traces"""
    tier_calibration_runs: int = 400
    """calibration problems run live to calibrate the 3-tier policies' κ in the tiers bench"""
    tier_kappa_runs: int = 1600
    """calibration problems run live to re-calibrate the shipped 3-tier policy's κ (κ's spread between calibration
    sets narrows with more runs; κ from 400 under-covered on fresh problems)"""
    tier_kappa_delta: float = 0.1
    """the PAC bound's δ for the shipped 3-tier policy's κ (``calibrate --delta``): coverage ≥ 1 − α with probability
    ≥ 1 − δ over calibration sets; 0 calibrates it split conformal instead (coverage ≥ 1 − α on average over
    calibration sets, which put the bench and fresh samples at 0.975–0.985 around the goal of 0.98)"""
    tier_offsets: tuple[float, ...] = (0.0, 3.0)
    """the shipped 3-tier policy's routing offsets (draft, mid; with escalation to the next tier up): the cheapest of
    0, 1, 1.5 and 3 at coverage 0.98 on two sets of 200 live calibration runs (BENCHMARKS)"""
    refine_problems: int = 1600
    """train problems the 3-tier policy is refined on per round, routed as shipped (``stepgraph refine``; round r's
    problems and sampling use seed r - 1)"""
    refine_kappa_runs: tuple[int, ...] = ()
    """live calibration runs that calibrate κ between refinement rounds, one per round after the first (none: the one
    round shipped): a round runs the router at the previous round's calibrated κ (at an uncalibrated κ, a round got
    worse). ``1600 400`` gives the three rounds BENCHMARKS measured: 3% cheaper on calibration, not shipped"""
    allocator_steps: int = 200
    """the allocators' RL steps"""
    radar_train_problems: int = 300
    """RADAR's train queries (at least 30: `radar bench` estimates an added configuration's ability on 30 of them)"""
    radar_calibration_problems: int = 200
    """RADAR's calibration queries"""
    radar_problems: int = 150
    """RADAR's test and shifted queries, per seed"""
    bench_problems: int = 200
    """test problems of every bench"""
    bench_calibration_problems: int = 100
    """calibration problems that tune the bench's thresholds"""
    taxonomy_problems: int = 300
    """the draft's problems of the taxonomy table"""


SEEDS = ("0", "1")


def _round_name(round_: int) -> str:
    return "three_tier_refined" if round_ == 1 else f"three_tier_refined_{round_}"


def refinement_rounds(policies: Path, s: Sizes) -> list[tuple[str, list[str]]]:
    """The 3-tier policy's refinement stages: round 1 refines ``three_tier`` at its κ; each later round first
    calibrates κ of the round before on live runs, then refines it at that κ."""
    listed: list[tuple[str, list[str]]] = []
    policy = policies / "three_tier"
    for round_ in range(1, len(s.refine_kappa_runs) + 2):
        stage = "policy-three-tier-refined" + ("" if round_ == 1 else f"-{round_}")
        if round_ > 1:
            calibrated = policies / f"{_round_name(round_ - 1)}_kappa"
            listed.append((f"{stage}-kappa", ["calibrate", "--policy", str(policy), "--runs", str(s.refine_kappa_runs[round_ - 2]),
                                              "--concurrency", "2", "--out", str(calibrated)]))
            policy = calibrated
        routing = ["--escalate-to", "next", *(["--tier-offsets", *map(str, s.tier_offsets)] if s.tier_offsets else [])
                   ] if round_ == 1 else []  # later rounds keep the routing the policy records
        listed.append((stage, ["refine", "--policy", str(policy), "--problems", str(s.refine_problems), "--seed", str(round_ - 1),
                               *routing, "--out", str(policies / _round_name(round_))]))
        policy = policies / _round_name(round_)
    return listed


def stages(out: Path, s: Sizes) -> list[tuple[str, list[str]]]:
    """(name, ``stepgraph`` command line) of every stage, in order."""
    store, policy = str(out / "traces.sqlite"), str(out / "policies" / "default")
    radar = out / "radar"
    responses, router, radar_store = str(radar / "responses"), str(radar / "router"), str(radar / "traces.sqlite")
    train = ["train", "--store", store, "--steps", str(s.policy_steps), "--entropy-coef", "0.01"]
    radar_sizes = ["--train-problems", str(s.radar_train_problems), "--calibration-problems", str(s.radar_calibration_problems)]
    listed: list[tuple[str, list[str]]] = [
        ("collect-train", ["collect", "--store", store, "--split", "train", "--problems", str(s.train_problems)]),
        ("collect-calibration", ["collect", "--store", store, "--split", "calibration", "--problems", str(s.calibration_problems)]),
        ("policy-default", [*train, "--out", policy]),
        ("policy-default-runs", ["calibrate", "--policy", policy, "--runs", str(s.calibration_problems),
                                 "--out", str(out / "policies" / "default_runs")]),
        ("bench", ["bench", "--store", store, "--policy", policy, "--out", str(out / "bench"), "--problems", str(s.bench_problems),
                   "--calibration-problems", str(s.bench_calibration_problems), "--seeds", *SEEDS]),
        ("tiers", ["bench", "--tiers", "3", "--out", str(out / "tiers"), "--policy", policy,
                   "--train-problems", str(s.tier_train_problems), "--calibration-problems", str(s.tier_calibration_problems),
                   "--calibration-runs", str(s.tier_calibration_runs), "--problems", str(s.bench_problems), "--seeds", *SEEDS]),
        ("policy-logits-only", [*train, "--out", str(out / "policies" / "logits_only"),
                                *(x for name in LOGPROB_FEATURES for x in ("--ignore-feature", name))]),
        ("policy-api-only", [*train, "--out", str(out / "policies" / "api_only"), "--ignore-feature", "logit_confidence"]),
        ("gate-threshold", ["calibrate", "--gate", "threshold", "--feature", "logit_confidence", "--store", store,
                            "--out", str(out / "gates" / "threshold")]),
        ("gate-steer", ["calibrate", "--gate", "steer", "--store", store, "--out", str(out / "gates" / "steer")]),
        ("gate-prm", ["calibrate", "--gate", "prm", "--store", store, "--out", str(out / "gates" / "prm")]),
        ("allocator", ["train", "--allocator", "--store", store, "--steps", str(s.allocator_steps), "--alpha", "0.02",
                       "--out", str(out / "allocator")]),
        ("allocator-combined", ["train", "--allocator", "--store", store, "--steps", str(s.allocator_steps), "--alpha", "0.02",
                                "--allocator-gate", policy, "--out", str(out / "allocator-combined")]),
        ("policy-three-tier", ["calibrate", "--domain-only", "--policy", str(out / "tiers" / "policy-3-tier"),
                               "--runs", str(s.calibration_problems), "--out", str(out / "policies" / "three_tier")]),
        *refinement_rounds(out / "policies", s),
        ("policy-three-tier-runs", ["calibrate", "--policy", str(out / "policies" / _round_name(len(s.refine_kappa_runs) + 1)),
                                    "--runs", str(s.tier_kappa_runs), "--concurrency", "2",
                                    *(["--delta", str(s.tier_kappa_delta)] if s.tier_kappa_delta else []),
                                    "--out", str(out / "policies" / "three_tier_runs")]),
        ("bench-3-tier", ["bench", "--store", store, "--policy", str(out / "policies" / "three_tier_runs"), "--out", str(out / "bench-3-tier"),
                          "--problems", str(s.bench_problems), "--calibration-problems", str(s.bench_calibration_problems),
                          "--seeds", *SEEDS]),
        *[(f"radar-collect-{split}-{seed}", ["radar", "collect", "--split", split, "--problems", str(n), "--seed", seed,
                                              "--dir", responses, "--policy", policy])
          for split, n, seeds in (("train", s.radar_train_problems, ("0",)), ("calibration", s.radar_calibration_problems, ("0",)),
                                  ("test", s.radar_problems, SEEDS), ("shifted", s.radar_problems, SEEDS))
          for seed in seeds],
        ("radar-fit", ["radar", "fit", "--responses", responses, *radar_sizes, "--out", router, "--policy", policy]),
        ("radar-traces-train", ["radar", "traces", "--router", router, "--split", "train", "--problems", str(s.radar_train_problems),
                                "--store", radar_store, "--policy", policy]),
        ("radar-traces-calibration", ["radar", "traces", "--router", router, "--split", "calibration",
                                      "--problems", str(s.radar_calibration_problems), "--store", radar_store, "--policy", policy]),
        ("radar-policy-difficulty", ["train", "--store", radar_store, "--steps", str(s.policy_steps),
                                     "--out", str(radar / "policy_difficulty")]),
        ("radar-policy-plain", ["train", "--store", radar_store, "--steps", str(s.policy_steps), "--ignore-feature", "difficulty",
                                "--out", str(radar / "policy_plain")]),
        ("radar-bench", ["radar", "bench", "--responses", responses, *radar_sizes, "--problems", str(s.radar_problems),
                         "--seeds", *SEEDS, "--policy", policy, "--difficulty-policy", str(radar / "policy_difficulty"),
                         "--plain-policy", str(radar / "policy_plain"), "--router", router, "--out", str(radar / "bench")]),
        ("bench-allocator", ["bench-allocator", "--allocator", str(out / "allocator"), "--combined-allocator",
                             str(out / "allocator-combined"), "--policy", policy, "--problems", str(s.bench_problems),
                             "--seeds", *SEEDS, "--out", str(out / "bench-allocator.json")]),
    ]
    from stepgraph.testbed import TIER_DIRS, testbed_task, wordproblems

    if testbed_task() is wordproblems:  # the taxonomy judges task v2's steps by kind
        listed.append(("taxonomy", ["taxonomy", "--model", str(TIER_DIRS[2][0]), "--problems", str(s.taxonomy_problems)]))
    return listed


def written(argv: list[str]) -> list[str]:
    """The paths a stage's command writes: ``collect``'s and ``radar traces``' store, ``radar collect``'s journal of
    its split (``DIR/SPLIT``), every other command's ``--out`` if it has one."""
    value = dict(itertools.pairwise(argv))
    if argv[:2] == ["radar", "collect"]:
        return [f"{value['--dir']}/{value['--split']}"]
    flag = "--store" if argv[0] == "collect" or argv[:2] == ["radar", "traces"] else "--out"
    return [value[flag]] if flag in value else []  # the taxonomy only prints


def dependencies(listed: list[tuple[str, list[str]]]) -> dict[str, set[str]]:
    """Each stage's earlier stages that write a path it names, or a path inside or around one (it reads that, or
    writes there too): what must finish before it starts when stages run side by side (``regenerate --jobs N``)."""
    def named(argv: list[str]) -> list[str]:  # a radar collect's --dir names only its split's journal
        if argv[:2] != ["radar", "collect"]:
            return argv
        journals = dict(itertools.pairwise(argv))["--dir"]
        return [token for token in argv if token != journals] + written(argv)

    def touches(argv: list[str], path: str) -> bool:
        return any(t == path or t.startswith(path + "/") or path.startswith(t + "/") for t in named(argv))

    return {name: {earlier for earlier, before in listed[:i] if any(touches(argv, path) for path in written(before))}
            for i, (name, argv) in enumerate(listed)}
