"""The shared artifact reader/writer: one-line errors for every bad manifest, RADAR's checksum, fail-closed inputs."""

from __future__ import annotations

import importlib
import json
import math
import warnings
from pathlib import Path

import pytest

from stepgraph.artifacts.policy import PolicyArtifact, PolicyNetwork
from stepgraph.errors import PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA, FEATURE_SCHEMA, observe
from stepgraph.models.base import StepOutput
from stepgraph.routing.gates import PolicyGate
from stepgraph.routing.gates.base import GateInput
from stepgraph.routing.learned_allocator import AllocatorArtifact, AllocatorNetwork
from stepgraph.routing.radar import Configuration, DifficultyRegressor, RadarManifest, RadarRouter

N = len(CONFIDENCE_SCHEMA.names)
TIERS = [{"name": "draft", "parameters": 10}, {"name": "target", "parameters": 20}]


def _radar(tmp_path: Path, **changes: object) -> Path:
    pool = [Configuration(name="draft", gate="draft", ability=-1.0, mean_flops=1.0),
            Configuration(name="target", gate="target", ability=2.0, mean_flops=8.0)]
    fields = {"configurations": pool, "pool": ["draft", "target"], "discrimination": 2.0, "threshold": 0.8, "alpha": 0.05,
              "embedding_tier": 0, "embedding_dim": 4, "regressor_hidden": 8, "tiers": TIERS}
    return RadarRouter(RadarManifest(**{**fields, **changes}), DifficultyRegressor(4, 8)).save(tmp_path / "radar")  # type: ignore[arg-type]


def _saved(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """An artifact of each kind, saved, with its manifest file name."""
    k = len(AllocatorArtifact.__dataclass_fields__["schema"].default_factory().names)  # type: ignore[misc]
    savers = {
        "policy": lambda d: PolicyArtifact(PolicyNetwork(N, 8, 2), 0.5, 0.1, CONFIDENCE_SCHEMA, [0.0] * N, [1.0] * N, 8, 2).save(d),
        "tier policy": lambda d: PolicyArtifact(PolicyNetwork(N, 8, 2, 2, tier_input=True), 0.0, 0.1, CONFIDENCE_SCHEMA,
                                                [0.0] * N, [1.0] * N, 8, 2, TIERS).save(d),
        "allocator": lambda d: AllocatorArtifact(AllocatorNetwork(k, 2, 8, 2), 0.5, 0.1, TIERS, [0.0] * k, [1.0] * k, 8, 2).save(d),
        "radar": lambda d: _radar(d.parent),
    }
    names = {"policy": "policy.json", "tier policy": "policy.json", "allocator": "allocator.json", "radar": "radar.json"}
    directory = savers[kind](tmp_path / ("radar" if kind == "radar" else "a"))
    return Path(directory), names[kind]


def _load(kind: str, directory: Path) -> object:
    loaders = {"policy": PolicyArtifact.load, "tier policy": PolicyArtifact.load, "allocator": AllocatorArtifact.load,
               "radar": RadarRouter.from_path}
    return loaders[kind](directory)


KINDS = ["policy", "tier policy", "allocator", "radar"]


@pytest.mark.parametrize("kind", KINDS)
def test_deeply_nested_json_in_any_manifest_is_one_clear_error(tmp_path, kind):
    directory, name = _saved(kind, tmp_path)
    text = (directory / name).read_text().rstrip().removesuffix("}")
    (directory / name).write_text(text + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")  # RecursionError on main
    with pytest.raises(PolicyFileError, match=rf"{name}.*nests JSON too deeply"):
        _load(kind, directory)


@pytest.mark.parametrize("kind", KINDS)
def test_a_manifest_that_is_not_utf8_is_one_clear_error(tmp_path, kind):
    directory, name = _saved(kind, tmp_path)
    (directory / name).write_bytes(b'{"format": "\xff\xfe"}')  # UnicodeDecodeError on today's main (RADAR)
    with pytest.raises(PolicyFileError, match=rf"{name} is not UTF-8"):
        _load(kind, directory)


def test_radar_weights_are_checksummed(tmp_path):
    directory = _radar(tmp_path)
    assert json.loads((directory / "radar.json").read_text())["weights_sha256"]
    RadarRouter.from_path(directory)
    other = tmp_path / "other"
    RadarRouter(RadarRouter.from_path(directory).manifest, DifficultyRegressor(4, 8)).save(other)
    (directory / "difficulty.safetensors").write_bytes((other / "difficulty.safetensors").read_bytes())
    with pytest.raises(PolicyFileError, match="difficulty.safetensors does not match the checksum"):
        RadarRouter.from_path(directory)


def test_a_radar_artifact_written_before_the_checksum_still_loads(tmp_path):
    directory = _radar(tmp_path)
    data = json.loads((directory / "radar.json").read_text())
    del data["weights_sha256"]
    (directory / "radar.json").write_text(json.dumps(data))
    assert RadarRouter.from_path(directory).manifest.pool == ["draft", "target"]


def test_radar_embedding_tier_out_of_range_is_one_clear_error(tmp_path):
    directory = _radar(tmp_path)
    data = json.loads((directory / "radar.json").read_text()) | {"embedding_tier": 5}
    (directory / "radar.json").write_text(json.dumps(data))
    with pytest.raises(PolicyFileError, match="embedding_tier 5 is not one of the 2 tiers"):
        RadarRouter.from_path(directory)

    class Tier:  # an artifact without recorded tiers: checked against the tiers it is given
        name, n_params = "draft", 10

    data |= {"tiers": []}
    (directory / "radar.json").write_text(json.dumps(data))
    with pytest.raises(PolicyFileError, match="embedding_tier 5 is not one of the 2 tiers"):
        RadarRouter.from_path(directory, tiers=[Tier(), Tier()])


@pytest.mark.parametrize("kind", ["policy", "tier policy", "allocator"])
def test_a_manifest_that_ignores_every_feature_is_refused(tmp_path, kind):
    directory, name = _saved(kind, tmp_path)
    data = json.loads((directory / name).read_text())
    if kind == "allocator":
        data["ignored"] = list(data["feature_schema"]["names"])
    else:
        data["normalization"]["ignored"] = list(data["feature_schema"]["names"])
    (directory / name).write_text(json.dumps(data))
    with pytest.raises(PolicyFileError, match="ignored lists every feature"):
        _load(kind, directory)


def test_a_sampled_token_logprob_of_minus_inf_escalates_with_the_reason():
    # The policy accepts this draft (κ = 1: nothing escalates on its score); the −inf sits on the
    # step break, which no feature reads (neither a math nor a prose token), so every feature is finite.
    tokens = ["So", " 2", "+", "3", "=", "5", "\n\n"]
    step = StepOutput("So 2+3=5", tokens, [12.0] * 7, [[(t, -0.1)] for t in tokens], 10, 0, 7, False, "m",
                      token_logprobs=[-0.1, -0.1, -0.1, -0.1, -0.1, -0.1, -math.inf])
    observation = observe(step, step_index=0, escalations=0, question="What is 2+3?")
    assert all(v is None or math.isfinite(v) for v in observation.values())
    n = len(FEATURE_SCHEMA.names)
    gate = PolicyGate(PolicyArtifact(PolicyNetwork(n, 8, 2), 1.0, 0.1, FEATURE_SCHEMA, [0.0] * n, [1.0] * n, 8, 2,
                                     ignored=["difficulty", "margin_min"]))
    decision = gate.decide(GateInput("What is 2+3?", (), step, observation))
    assert decision.escalate and decision.reason == "non-finite token statistics: token_logprobs"
    finite = StepOutput(**{**step.to_dict(), "token_logprobs": [-0.1] * 7})
    assert not gate.decide(GateInput("What is 2+3?", (), finite, observation)).escalate


@pytest.mark.parametrize(("module", "name"), [("stepgraph.tier_policy", "TierPolicyArtifact"),
                                              ("stepgraph.tier_policy", "TierPolicyNetwork"),
                                              ("stepgraph.routing.gates.tier_policy_gate", "TierPolicyGate")])
def test_the_former_k_tier_modules_are_deprecated_aliases(module, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alias = getattr(importlib.import_module(module), name)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    if name == "TierPolicyGate":
        assert alias is PolicyGate
        return
    n = len(CONFIDENCE_SCHEMA.names)
    with pytest.warns(DeprecationWarning):  # the former K-tier constructors build the one class
        network = importlib.import_module("stepgraph.artifacts.policy").TierPolicyNetwork(n, 2, 8, 2)
    built = alias(n, 2, 8, 2) if name == "TierPolicyNetwork" else alias(network, 0.5, 0.1, CONFIDENCE_SCHEMA, [0.0] * n,
                                                                         [1.0] * n, TIERS)
    assert isinstance(network, PolicyNetwork) and network.tier_input and network.n_tiers == 2
    if name == "TierPolicyArtifact":  # its κ was a probability: 0.5 is even odds, log-odds 0
        assert type(built) is PolicyArtifact and built.kappa == 0.0
