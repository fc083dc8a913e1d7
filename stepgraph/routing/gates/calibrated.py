"""Read a calibrated gate directory (``gate.json``, written by ``stepgraph calibrate``) or a policy directory.

The runtime half of calibration: serving and solving load the gate here; ``stepgraph.training.calibration.calibrate``
sets the thresholds and writes the directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stepgraph.artifacts.tiers import allow_other_tiers as allow_other
from stepgraph.artifacts.tiers import check_tiers, describe
from stepgraph.domain import Domain
from stepgraph.errors import PolicyFileError
from stepgraph.models.base import StepModel
from stepgraph.routing.gates.base import Gate
from stepgraph.routing.gates.judges import ProcessRewardGate
from stepgraph.routing.gates.policy_gate import PolicyGate
from stepgraph.routing.gates.simple import ConfidenceThresholdGate
from stepgraph.routing.gates.steer import StepwiseGMMGate

GATE_FORMAT = "stepgraph.gate"
GATE_FORMAT_VERSION = 1
PRM_FILE = "prm.safetensors"
GATE_FILE = "gate.json"


def load_gate_artifact(directory: str | Path, tiers: Sequence[StepModel] | None = None,
                       allow_other_tiers: bool = False) -> Gate:
    """A calibrated gate directory (gate.json) or a policy directory (policy.json), checked against ``tiers``."""
    directory = Path(directory)
    if (directory / GATE_FILE).is_file():
        try:
            manifest = json.loads((directory / GATE_FILE).read_text())
            if (manifest.get("format"), manifest.get("format_version")) != (GATE_FORMAT, GATE_FORMAT_VERSION):
                raise PolicyFileError(f"{directory / GATE_FILE} is not a {GATE_FORMAT} v{GATE_FORMAT_VERSION} file.")
            name, options, recorded = manifest["gate"], manifest["options"], manifest.get("tiers")
            domain = None if manifest.get("domain") is None else Domain.model_validate(manifest["domain"])
        except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
            raise PolicyFileError(f"{directory / GATE_FILE} is corrupted or incomplete: {exc}") from exc
        if tiers is not None:
            check_tiers(recorded, describe(tiers), str(directory), allow_other_tiers)
        if name == "policy":
            policy = PolicyGate.from_path(directory)
            return allow_other(policy) if allow_other_tiers else policy
        gate = _gate_of(directory, name, options)
        gate.domain = domain
        return gate
    policy = PolicyGate.from_path(directory)  # raises PolicyFileError naming the missing files
    if tiers is not None:
        check_tiers(policy.artifact.models.get("tiers"), describe(tiers), str(directory), allow_other_tiers)
    return allow_other(policy) if allow_other_tiers else policy


def _gate_of(directory: Path, name: str, options: dict[str, Any]) -> Gate:
    """The calibrated score-based gate ``name`` of a gate directory."""
    if name == "steer":
        gate = StepwiseGMMGate.load(directory / "steer.json")
        return StepwiseGMMGate(gate.mixtures, gate.pooled, float(options["threshold"]), gate.feature)
    if name == "threshold":
        return ConfidenceThresholdGate(float(options["threshold"]), str(options["feature"]))
    if name == "prm":
        from stepgraph.routing.gates.reward_model import RewardModel  # torch, only for this gate

        return ProcessRewardGate(RewardModel.load(directory / PRM_FILE), float(options["threshold"]))
    raise PolicyFileError(f"{directory / GATE_FILE}: unknown gate {name!r}.")
