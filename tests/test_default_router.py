"""The default router is the tier count the bench measured cheaper at coverage ≥ 0.98: draft → mid → target,
with the shipped 3-tier policy; the pair stays one option away, with its own policy."""

import json

import pytest

from stepgraph.cli import main
from stepgraph.errors import ConfigError, PolicyFileError
from stepgraph.graph import build_graph
from stepgraph.routing.gates import PolicyGate
from stepgraph.testbed import DEFAULT_TIERS, TIER_DIRS, load_pair, load_tiers
from stepgraph.testbed.defaults import (
    DEFAULT_POLICY_DIR,
    THREE_TIER_POLICY_DIR,
    default_gate_name,
    policy_dir,
    resolve_gate,
)


def _recorded_tiers(gate):
    return [tier["name"] for tier in gate.artifact.models["tiers"]]


def test_the_default_router_is_three_tiers_with_the_three_tier_policy():
    assert DEFAULT_TIERS == 3 and [p.name for p in TIER_DIRS[DEFAULT_TIERS]] == ["draft", "mid", "target"]
    assert default_gate_name() == "policy" and policy_dir() == THREE_TIER_POLICY_DIR
    assert _recorded_tiers(resolve_gate()) == ["draft", "mid", "target"]
    assert _recorded_tiers(resolve_gate(n_tiers=2)) == ["draft", "target"] and policy_dir(2) == DEFAULT_POLICY_DIR
    assert resolve_gate("policy", path=DEFAULT_POLICY_DIR).artifact.kappa == PolicyGate.from_path(DEFAULT_POLICY_DIR).artifact.kappa


def test_each_policy_builds_on_its_own_tier_count_and_is_refused_on_the_other():
    build_graph(load_tiers(), resolve_gate())
    build_graph(load_pair(), resolve_gate(n_tiers=2))
    with pytest.raises(PolicyFileError, match="calibrated on the tiers"):
        build_graph(load_pair(), resolve_gate())
    with pytest.raises(ValueError, match="ships policies for \\[2, 3\\] tiers"):
        resolve_gate(n_tiers=4)


def test_studio_chat_model_tool_and_servers_share_the_three_tier_graph():
    from stepgraph.integrations.studio import _shipped_tiers, default_graph

    assert [t.name for t in _shipped_tiers()] == ["draft", "mid", "target"]
    assert "draft" in default_graph().get_graph().nodes


@pytest.mark.slow
def test_solve_answers_on_three_tiers_by_default_and_on_the_pair_with_tiers_2(capsys):
    question = "Tom has 5 pens. He buys 3 more. How many pens does he have?"
    assert main(["solve", question, "--json", "--gate", "target"]) == 0
    assert set(json.loads(capsys.readouterr().out)["costs"]) == {"0", "1", "2"}
    assert main(["solve", question, "--json", "--tiers", "2", "--gate", "target"]) == 0
    assert set(json.loads(capsys.readouterr().out)["costs"]) == {"0", "1"}
    assert main(["solve", question, "--tiers", "2"]) == 0  # the pair's own policy, not the 3-tier one
    assert "tiers: draft < target" in capsys.readouterr().out


def test_evaluate_runs_the_tiers_the_policies_record_and_refuses_a_mix():
    from stepgraph.cli.training import _shipped_tier_count

    assert _shipped_tier_count({"a": PolicyGate.from_path(THREE_TIER_POLICY_DIR)}) == 3
    assert _shipped_tier_count({"a": PolicyGate.from_path(DEFAULT_POLICY_DIR)}) == 2
    with pytest.raises(ConfigError, match="different numbers of tiers"):
        _shipped_tier_count({"a": PolicyGate.from_path(THREE_TIER_POLICY_DIR), "b": PolicyGate.from_path(DEFAULT_POLICY_DIR)})


def test_the_pair_benchmarks_route_with_the_pairs_own_policy():
    from stepgraph.benchmarks.overhead import measure_overhead

    assert measure_overhead(n_problems=1)["steps"] > 0  # the default policy gate, resolved for two tiers
