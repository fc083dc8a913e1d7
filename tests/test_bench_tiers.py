"""``bench --tiers 3`` rows: the allocator rows pair with the others (same problems and seeds) and count steps per tier."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scripted import ScriptedModel
from stepgraph.training.bench.bench_tiers import markdown_table, matched_coverage, run_tier_bench
from stepgraph.training.calibration.live_kappa import with_live_kappa
from stepgraph.training.calibration.tuning import Piece
from stepgraph.training.collection.collect import Item

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork
from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.routing.allocator import FixedAllocator
from stepgraph.routing.gates import AlwaysDraftGate

STEPS = ["She has 12 coins.", "12 + 8 = 20.", "\\boxed{20}"]


def tiers() -> list[ScriptedModel]:
    return [ScriptedModel(name, n, STEPS, confidence=10.0) for name, n in (("draft", 100), ("mid", 300), ("target", 1000))]


def policy(out: Path, models: list[ScriptedModel]) -> Path:
    torch.manual_seed(0)
    n = len(CONFIDENCE_SCHEMA.names)
    described = [{"name": m.name, "parameters": m.n_params} for m in models]
    artifact = PolicyArtifact(PolicyNetwork(n, 8, 2, len(models), tier_input=True), 0.0, 0.1, CONFIDENCE_SCHEMA, [0.0] * n,
                              [1.0] * n, 8, 2, described, ignored=["difficulty"])  # scripted models report no difficulty
    return artifact.save(out)


def test_allocator_rows_pair_with_the_other_rows_and_count_steps_per_tier(tmp_path: Path) -> None:
    draft, _, target = models = tiers()
    policies = {"policy-3-tier": policy(tmp_path / "p3", models), "policy-2-tier": policy(tmp_path / "p2", [draft, target])}
    items = [Item("a", "q", "20"), Item("b", "q 1", "20")]
    report = run_tier_bench(models, policies, items, seeds=(0, 1), shipped_policy=None, progress=False,
                            allocators={"allocator-2-tier": ((0, 2), AlwaysDraftGate(), FixedAllocator(1))})
    rows, summary = report["rows"], report["summary"]
    alloc, alone = rows["allocator-2-tier"], rows["target-alone"]
    assert [(r["problem_id"], r["seed"]) for r in alloc] == [(r["problem_id"], r["seed"]) for r in alone]
    # Every step allocated to the target before any draft: the target alone's cost, no draft call.
    assert [r["flops"] for r in alloc] == pytest.approx([r["flops"] for r in alone])
    assert all(r["draft_calls"] == 0 and r["steps_by_model"] == {"draft": 0, "mid": 0, "target": 3} for r in alloc)
    assert summary["allocator-2-tier"]["tier_share"] == {"draft": 0.0, "mid": 0.0, "target": 1.0}
    assert summary["allocator-2-tier"]["covered"]["mean"] == 1.0
    each = report["comparison"]["3_minus_each_2_tier"]
    assert set(each) == {"policy-2-tier", "allocator-2-tier"}
    table = markdown_table(report)
    assert "| allocator-2-tier |" in table and "3-tier minus allocator-2-tier" in table


def test_collection_reuses_a_store_that_holds_every_problem_even_of_an_older_feature_schema(tmp_path: Path) -> None:
    """Regression: ``collect`` refused the collected tier traces (feature schema v1) although none were missing."""
    from stepgraph.training.bench.bench_tiers import TierBenchArgs, collect_tier_traces
    from stepgraph.training.collection.collect import testbed_items
    from stepgraph.training.data.records import Episode
    from stepgraph.training.data.store import TraceStore

    args = TierBenchArgs(out=tmp_path, train_problems=2, calibration_problems=1)
    with TraceStore(tmp_path / "traces.sqlite") as store:
        store.set_meta("feature_schema", {"name": "stepgraph.confidence", "version": 1, "names": ["logit_confidence"]})
        for split, n, seed in (("train", 2, 0), ("calibration", 1, 1)):
            for item in testbed_items(split, n, seed=seed):
                store.add(Episode(item.problem_id, item.question, item.reference, [], 1, 1, 1.0), split)

        def no_models() -> list:
            raise AssertionError("nothing is missing: no model should be loaded")

        assert collect_tier_traces(store, no_models, args) == {"train": {"reused": 2}, "calibration": {"reused": 1}}


def test_a_policy_is_reused_only_when_trained_with_the_same_settings(tmp_path: Path) -> None:
    from stepgraph.training.bench.bench_tiers import _trained_alike
    from stepgraph.training.learning.cpo_tiers import TierCPOArgs, train_tier_policy
    from test_cpo_tiers import TIERS, episodes

    args = TierCPOArgs(alpha=0.1, steps=0, warm_start=5, hidden=8)
    artifact, _ = train_tier_policy(episodes(10, 0), TIERS, args, progress=False)
    saved = artifact.save(tmp_path / "p")
    assert _trained_alike(saved, TierCPOArgs(alpha=0.1, steps=0, warm_start=5, hidden=8), [0, 1, 2], 10, True)
    assert not _trained_alike(saved, TierCPOArgs(alpha=0.1, steps=0, warm_start=0, hidden=8), [0, 1, 2], 10, True)
    assert not _trained_alike(saved, args, [0, 2], 10, True) and not _trained_alike(saved, args, [0, 1, 2], 11, True)
    assert not _trained_alike(tmp_path / "missing", args, [0, 1, 2], 10, True)
    with_live_kappa(PolicyArtifact.load(saved), {"threshold": 1.7, "guarantee": {"type": "split-conformal", "coverage": 0.9},
                                                 "calibration": {"covered": 1.0, "misses": 0, "problems": 30}}, 0.1).save(saved)
    assert _trained_alike(saved, args, [0, 1, 2], 10, True)
    assert not _trained_alike(saved, args, [0, 1, 2], 10, False)  # κ from runs, but traces asked for: train again


def test_live_kappa_is_saved_within_range_keeping_the_trace_calibrated_one(tmp_path: Path) -> None:
    from test_cpo_tiers import TIERS

    saved = policy(tmp_path / "p", [ScriptedModel(t["name"], t["parameters"], ["x"]) for t in TIERS])
    for threshold in (1.7, -0.3, 0.42):  # a log-odds κ: any finite threshold is kept as it is
        with_live_kappa(PolicyArtifact.load(saved), {"threshold": threshold, "guarantee": {"type": "split-conformal", "coverage": 0.9},
                                                     "calibration": {"covered": 0.95, "misses": 1, "problems": 30}}, 0.1).save(saved)
        artifact = PolicyArtifact.load(saved)
        assert artifact.kappa == threshold and artifact.guarantee["type"] == "split-conformal"
        assert artifact.training["kappa_from_traces"] == 0.0 and artifact.training["kappa_from"] == "calibration runs"
        assert artifact.training["calibration_runs"]["problems"] == 30


def _pieces(edges: list[float], rows: list[dict[str, float]]) -> list[Piece]:
    """One problem's pieces: ``rows[i]`` holds on ``(edges[i - 1], edges[i]]`` (the first from -inf, the last to +inf)."""
    bounds = [-math.inf, *edges, math.inf]
    return [Piece(lo, hi, {"prefill_flops": 0.0, "escalation_rate": 0.0, **row}) for lo, hi, row in zip(bounds, bounds[1:], rows)]


def test_matched_coverage_compares_each_router_at_its_cheapest_threshold_reaching_the_level() -> None:
    # Router A (3-tier) covers both problems for t <= 0.5 at 3 FLOPs; router B (2-tier) needs t <= 0.2 at 5 FLOPs.
    a = [_pieces([0.5], [{"covered": 1.0, "flops": 3.0}, {"covered": 0.0, "flops": 1.0}])] * 2
    b = [_pieces([0.2, 0.6], [{"covered": 1.0, "flops": 5.0}, {"covered": 0.0, "flops": 2.0}, {"covered": 0.0, "flops": 1.0}])] * 2
    report = matched_coverage({"policy-3-tier": a, "x-2-tier": b}, [0.9])
    level = report["0.9"]
    assert level["points"]["policy-3-tier"]["flops"] == 3.0 and level["points"]["x-2-tier"]["flops"] == 5.0
    diff = level["3_minus_each_2_tier"]["x-2-tier"]
    assert diff["flops"]["mean"] == -2.0 and diff["covered"]["mean"] == 0.0
    report_table = {"summary": {}, "comparison": {"best_2_tier": "x-2-tier", **{k: diff["flops"] for k in (
        "flops_3_minus_best_2", "total_flops_3_minus_best_2", "coverage_3_minus_best_2")}}, "matched_coverage": report}
    assert "Matched coverage ≥ 0.9" in markdown_table(report_table)


def test_bench_tiers_options_reach_the_tier_bench(monkeypatch, tmp_path, capsys):
    """`stepgraph bench --tiers 3` is the one entry: its warm-start, CPO, allocator and extra-policy options arrive."""
    from stepgraph.training.bench import bench_tiers

    from stepgraph.cli import main as cli_main

    seen = {}

    def fake_main(args):
        seen["args"] = args
        (tmp_path / "table.md").write_text("| router |\n")
        return {"table": str(tmp_path / "table.md"), "results": "", "comparison": {}}

    monkeypatch.setattr(bench_tiers, "main", fake_main)
    assert cli_main(["bench", "--tiers", "3", "--out", str(tmp_path), "--warm-start", "300", "--cpo-steps", "0",
                     "--allocator", "a", "--extra-policy", f"x-2-tier={tmp_path}", "--problems", "5"]) == 0
    args = seen["args"]
    assert args.cpo == {"warm_start": 300, "steps": 0} and args.allocator == Path("a") and args.problems == 5
    assert args.extra_policies == {"x-2-tier": tmp_path}
    assert args.calibration_runs == 400 and list(args.frontier) == [0.97, 0.98, 0.99]
    assert cli_main(["bench", "--tiers", "3", "--out", str(tmp_path), "--calibration-runs", "0", "--frontier"]) == 0
    assert seen["args"].calibration_runs == 0 and list(seen["args"].frontier) == []
    assert cli_main(["bench", "--tiers", "3", "--out", str(tmp_path), "--calibration-runs", "40"]) == 2  # α = 0.02 needs 49
    assert "--calibration-runs 40 cannot certify" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["bench", "--tiers", "3", "--out", str(tmp_path), "--frontier", "1.5"])
    assert "--frontier" in capsys.readouterr().err
    assert cli_main(["bench", "--tiers", "3", "--out", str(tmp_path), "--extra-policy", "no-equals-sign"]) == 2
    assert "NAME=DIR" in capsys.readouterr().err
