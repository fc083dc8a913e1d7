"""Every artifact format shipped before format 3 loads converted and decides as the old code did.

``tests/data/legacy/expected.json`` holds the old code's scores and decisions on the fixed
observations of ``legacy_observations`` (``tests/data/legacy/make_expected.py``, run at git 39dbfa3).
"""

import json
import math
import warnings
from pathlib import Path

import pytest
from legacy_observations import observations
from shipped import shipped_parameters

from stepgraph.artifacts.policy import ALWAYS, ROUNDS_TO_ONE, PolicyArtifact, kappa_from_probability
from stepgraph.errors import PolicyFileError
from stepgraph.features import FEATURE_SCHEMA
from stepgraph.models.base import StepOutput
from stepgraph.routing.allocator import ALLOCATOR_SCHEMA, AllocatorInput
from stepgraph.routing.gates import PolicyGate
from stepgraph.routing.gates.base import GateInput
from stepgraph.routing.learned_allocator import AllocatorArtifact, LearnedAllocator
from stepgraph.testbed import TIER_DIRS
from stepgraph.testbed.defaults import DEFAULT_POLICY_DIR, THREE_TIER_POLICY_DIR

DATA = Path(__file__).parent / "data"
LEGACY = DATA / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
STEP = StepOutput("1+1=2", ["1"], [9.0], [[("1", -0.1)]], 10, 0, 1, False, "m")
SHIPPED = DEFAULT_POLICY_DIR.parent
OLD = {  # fixture → (directory, format before 3)
    "policy_v1": (DATA / "policy_v1", "stepgraph.policy v1"),
    "policy_v2_log_odds": (LEGACY / "policy_v2_log_odds", "stepgraph.policy v2"),
    "policy_v2_probability": (LEGACY / "policy_v2_probability", "stepgraph.policy v2"),
    "tier_policy_v1": (LEGACY / "tier_policy_v1", "stepgraph.tier_policy v1"),
}
SHIPPED_TIERS = {"default": 2, "api_only": 2, "logits_only": 2, "three_tier": 3}  # shipped policy → its tiers


def _decisions(gate: PolicyGate) -> list[tuple[float, bool, int | None]]:
    artifact = gate.artifact
    rows = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for obs in observations(artifact.schema.names, artifact.mean, artifact.std):
            for tier in range(max(1, len(artifact.tiers) - 1) if artifact.network.tier_input else 1):
                d = gate.decide(GateInput("q", (), STEP, obs, tier))
                rows.append((d.score, d.escalate, d.tier))
    # Every 25th observation has no values: the gate imputes them and says so, and nothing else.
    assert all(issubclass(w.category, RuntimeWarning) and "missing features are imputed" in str(w.message) for w in caught)
    return rows


def _assert_decides_as_before(gate: PolicyGate, name: str) -> None:
    expected = EXPECTED[name]
    rows = _decisions(gate)
    assert [(e, t) for _, e, t in rows] == [(bool(e), t) for _, e, t in expected["decisions"]]
    for (score, _, _), (old, _, _) in zip(rows, expected["decisions"]):  # the old score, on the log-odds scale
        if expected["scale"] == "log_odds":
            assert score == pytest.approx(old, rel=1e-7)
        elif 0 < old < 1:  # a probability, computed in float32 (1 − π(k) to within 2^-24): compared as log-odds
            assert score == pytest.approx(math.log(old / (1 - old)), abs=1e-4 + 2**-23 / (old * (1 - old)))
    assert 0 < sum(e for _, e, _ in rows) < len(rows)  # the observations fall on both sides of κ


@pytest.mark.parametrize("name", sorted(OLD))
def test_each_old_policy_format_loads_with_one_warning_and_decides_as_before(name):
    directory, old_format = OLD[name]
    with pytest.warns(DeprecationWarning, match=f"old format {old_format}.*PolicyArtifact.load\\(old\\).save\\(new\\)") as caught:
        gate = PolicyGate.from_path(directory)
    assert len([w for w in caught if issubclass(w.category, DeprecationWarning)]) == 1
    before = EXPECTED[name]["kappa"]
    assert gate.threshold == (before if EXPECTED[name]["scale"] == "log_odds" else kappa_from_probability(before))
    _assert_decides_as_before(gate, name)


@pytest.mark.parametrize("name", sorted(OLD))
def test_an_old_format_rewritten_in_format_3_loads_silently_and_decides_the_same(name, tmp_path, recwarn):
    directory, _ = OLD[name]
    with pytest.warns(DeprecationWarning):
        PolicyArtifact.load(directory).save(tmp_path)
    recwarn.clear()
    manifest = json.loads((tmp_path / "policy.json").read_text())
    assert (manifest["format"], manifest["format_version"], manifest["kind"]) == ("stepgraph.policy", 3, "policy")
    gate = PolicyGate.from_path(tmp_path)
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
    _assert_decides_as_before(gate, name)


@pytest.mark.parametrize("shipped", sorted(SHIPPED_TIERS))
def test_the_shipped_policies_are_format_3_load_silently_and_carry_the_shipped_tiers(shipped):
    manifest = json.loads((SHIPPED / shipped / "policy.json").read_text())
    assert (manifest["format"], manifest["format_version"], manifest["kind"]) == ("stepgraph.policy", 3, "policy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation, no tier or schema warning
        gate = PolicyGate.from_path(SHIPPED / shipped)
    tiers = [d.name for d in TIER_DIRS[SHIPPED_TIERS[shipped]]]
    assert [(t["name"], t["parameters"]) for t in gate.artifact.tiers] == [(n, shipped_parameters(n)) for n in tiers]
    assert gate.artifact.network.tier_input == (len(tiers) > 2)


def test_the_shipped_three_tier_policy_routes_one_tier_up_and_its_network_tells_the_tiers_apart():
    artifact = PolicyArtifact.load(THREE_TIER_POLICY_DIR)
    assert artifact.network.tier_input and [t["name"] for t in artifact.tiers] == ["draft", "mid", "target"]
    assert (artifact.routing.escalate_to, artifact.routing.tier_offsets) == ("next", [0.0, 3.0])
    assert artifact.schema == FEATURE_SCHEMA  # v4: it reads the prose-token confidences
    assert {t for _, e, t in _decisions(PolicyGate(artifact)) if e} == {None}  # the next tier up
    assert {t for _, e, t in _decisions(PolicyGate(artifact.with_routing("likeliest"))) if e} == {1, 2}


def test_the_old_allocator_format_loads_converted_and_allocates_as_before(tmp_path, recwarn):
    with pytest.warns(DeprecationWarning, match="stepgraph.allocator v1"):
        artifact = AllocatorArtifact.load(LEGACY / "allocator_v1")
    assert artifact.kappa == kappa_from_probability(EXPECTED["allocator_v1"]["kappa"])
    artifact.save(tmp_path)
    recwarn.clear()
    manifest = json.loads((tmp_path / "allocator.json").read_text())
    assert (manifest["format_version"], manifest["kind"], manifest["kappa"]) == (2, "allocator", artifact.kappa)
    allocator = LearnedAllocator.from_path(tmp_path)
    assert not recwarn.list
    rows = []
    for obs in observations(ALLOCATOR_SCHEMA.names, artifact.mean, artifact.std):
        for base in range(2):
            decision = allocator.allocate(AllocatorInput("q", (), obs, base, 3))
            rows.append(decision.tier)
            old = EXPECTED["allocator_v1"]["decisions"][len(rows) - 1][0]
            if 0 < old < 1:
                assert decision.score == pytest.approx(math.log(old / (1 - old)), abs=1e-4 + 2**-23 / (old * (1 - old)))
    assert rows == [tier for _, tier in EXPECTED["allocator_v1"]["decisions"]]
    assert len(set(rows)) == 3


def test_a_probability_kappa_of_0_or_1_maps_to_the_safe_side():
    assert kappa_from_probability(0.0) == ALWAYS and math.isfinite(ALWAYS)  # escalates every finite score
    assert kappa_from_probability(1.0) == kappa_from_probability(ROUNDS_TO_ONE) == pytest.approx(24 * math.log(2), abs=1e-6)
    assert kappa_from_probability(0.5) == 0.0


def test_a_manifest_of_another_kind_is_refused_by_name(tmp_path):
    PolicyArtifact.load(DEFAULT_POLICY_DIR).save(tmp_path)
    manifest = json.loads((tmp_path / "policy.json").read_text()) | {"kind": "allocator"}
    (tmp_path / "policy.json").write_text(json.dumps(manifest))
    with pytest.raises(PolicyFileError, match="holds an allocator \\(kind 'allocator'\\), not a policy"):
        PolicyArtifact.load(tmp_path)
