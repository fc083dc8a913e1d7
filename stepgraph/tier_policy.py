"""The K-tier routing policy π(tier | o, k) and its artifact: safetensors weights + a JSON manifest.

The paper's action space: a step written by tier k is either accepted, or rewritten by any
stronger tier k' > k. The network reads the step's features and the tier k that wrote it (one-hot)
and gives a distribution over the tiers j ≥ k, where j = k means "accept"; tiers below k are masked
out. The gate escalates when π(escalate | o, k) = 1 − π(k | o, k) ≥ κ, to the most likely stronger
tier, and asks again on that tier's step; κ is calibrated to coverage 1 − α like the 2-tier policy's.

The artifact is a directory holding ``policy.safetensors`` and ``policy.json`` with format
``stepgraph.tier_policy`` (the 2-tier ``stepgraph.policy`` artifacts are unchanged, and
``PolicyGate.from_path`` loads either). It records the tiers it was trained on, is never pickled,
and ``load`` refuses missing, corrupted, mismatched or out-of-range files as ``PolicyArtifact`` does.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import torch
from pydantic import BaseModel, Field, Strict, ValidationError, model_validator

from stepgraph.errors import PolicyFileError
from stepgraph.features import FeatureSchema, Observation
from stepgraph.policy import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    _check_feature_schema,
    _FeatureSchemaModel,
    _Network,
    _Normalization,
    _validation_message,
    load_weights,
    read_manifest,
    write_artifact,
)

FORMAT = "stepgraph.tier_policy"
FORMAT_VERSION = 1
MAX_TIERS = 16
MASKED = -1e9
"""The logit of a tier below the current one: probability 0, and still finite for the KL's arithmetic."""


class _Tier(BaseModel):
    name: str
    parameters: Annotated[int, Field(ge=0)] | None = None


class TierManifest(BaseModel):
    """The schema of a K-tier ``policy.json``."""

    format: Literal["stepgraph.tier_policy"]
    format_version: Literal[1]
    kappa: Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
    """the threshold on π(escalate | o, k) = 1 − π(k | o, k), in [0, 1]"""
    alpha: Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)]
    feature_schema: _FeatureSchemaModel
    normalization: _Normalization
    network: _Network
    tiers: list[_Tier] = Field(min_length=2, max_length=MAX_TIERS)
    """the models the policy routes between, cheapest first"""
    training: dict[str, Any] = Field(default_factory=dict)
    guarantee: dict[str, Any] | None = None
    weights_sha256: str

    @model_validator(mode="after")
    def _fits_the_schema(self) -> Self:
        self.normalization.check_fits(self.feature_schema)
        return self


class TierPolicyNetwork(torch.nn.Module):
    """An MLP from [normalised features, one-hot current tier] to logits over the tiers.

    Logits of tiers below the current one are ``MASKED``, so every distribution it gives is over
    "accept" (the current tier) and the stronger tiers.

    Args:
        n_features: feature width (the one-hot tier is appended to it).
        n_tiers: K, the number of tiers.
        hidden: units per hidden layer.
        layers: linear layers.
    """

    def __init__(self, n_features: int, n_tiers: int, hidden: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.n_features, self.n_tiers = n_features, n_tiers
        widths = [n_features + n_tiers] + [hidden] * (layers - 1) + [n_tiers]
        modules: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            modules.append(torch.nn.Linear(a, b))
            if i < len(widths) - 2:
                modules.append(torch.nn.Tanh())
        self.net = torch.nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        allowed = torch.cumsum(x[..., self.n_features :], dim=-1) > 0.5  # tiers at or above the current one
        return self.net(x).masked_fill(~allowed, MASKED)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=-1)

    def escalate_probability(self, x: torch.Tensor) -> torch.Tensor:
        """1 − π(current tier | x): the probability of any stronger tier."""
        current = x[..., self.n_features :].argmax(dim=-1, keepdim=True)
        return 1.0 - self.probabilities(x).gather(-1, current).squeeze(-1)


def tier_inputs(features: torch.Tensor, tiers: torch.Tensor, n_tiers: int) -> torch.Tensor:
    """The network's input: normalised feature rows with the one-hot tier that wrote each step."""
    return torch.cat([features, torch.nn.functional.one_hot(tiers.long(), n_tiers).to(features.dtype)], dim=-1)


@dataclass
class TierPolicyArtifact:
    """A trained K-tier policy with what it needs to route new observations."""

    network: TierPolicyNetwork
    kappa: float
    alpha: float
    schema: FeatureSchema
    mean: list[float]
    std: list[float]
    tiers: list[dict[str, Any]]
    """``{"name", "parameters"}`` of each tier, cheapest first"""
    hidden: int = 64
    layers: int = 3
    ignored: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    guarantee: dict[str, Any] | None = None

    @property
    def models(self) -> dict[str, Any]:
        """The tiers as the 2-tier artifact's ``models`` reads them, for the checks shared by both."""
        return {"draft": self.tiers[0], "target": self.tiers[-1], "tiers": self.tiers}

    def normalise(self, rows: Sequence[Sequence[float]]) -> torch.Tensor:
        """Standardise feature rows; a missing (NaN) or ignored feature becomes its training mean (0)."""
        x = torch.tensor(rows, dtype=torch.float32)
        x = (x - torch.tensor(self.mean)) / torch.tensor(self.std)
        x[..., [self.schema.names.index(n) for n in self.ignored]] = 0.0
        return torch.nan_to_num(x, nan=0.0)

    @torch.no_grad()
    def probabilities(self, observation: Observation, tier: int) -> list[float]:
        """π(j | o, tier) for every tier j (0 below ``tier``)."""
        if not 0 <= tier < len(self.tiers):
            raise ValueError(f"tier {tier} is outside this policy's {len(self.tiers)} tiers.")
        x = tier_inputs(self.normalise([self.schema.vector(observation)]), torch.tensor([tier]), len(self.tiers))
        return [float(p) for p in self.network.probabilities(x)[0]]

    def save(self, directory: str | Path) -> Path:
        """Write the artifact after checking that ``load`` will accept it.

        Raises:
            PolicyFileError: an invalid manifest or non-finite weights; nothing is written.
        """
        if len(self.tiers) != self.network.n_tiers:
            raise PolicyFileError(f"Refusing to write a tier policy into {directory}: it names {len(self.tiers)} tiers "
                                  f"but its network routes between {self.network.n_tiers}.")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kappa": self.kappa,
            "alpha": self.alpha,
            "feature_schema": self.schema.to_dict(),
            "normalization": {"mean": self.mean, "std": self.std, "ignored": self.ignored},
            "network": {"hidden": self.hidden, "layers": self.layers},
            "tiers": self.tiers,
            "training": self.training,
            "guarantee": self.guarantee,
            "weights_sha256": "",
        }
        return write_artifact(Path(directory), self.network, manifest, TierManifest, "a tier policy", WEIGHTS_FILE, MANIFEST_FILE,
                              FORMAT)

    @classmethod
    def load(cls, directory: str | Path, expected_schema: FeatureSchema | None = None) -> TierPolicyArtifact:
        """Load and validate a K-tier artifact.

        Raises:
            PolicyFileError: files missing, unreadable or corrupted, another format, a value out of
                range, a network that does not fit the manifest's tiers, non-finite weights, or a
                feature schema other than ``expected_schema`` (None: any schema ``stepgraph.features.SCHEMAS``
                knows). The message names the file and the field.
        """
        directory = Path(directory)
        manifest_path, weights_path = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
        raw, checksum = read_manifest(directory, WEIGHTS_FILE, MANIFEST_FILE, "policy")
        if isinstance(raw, dict):
            if (raw.get("format"), raw.get("format_version")) != (FORMAT, FORMAT_VERSION):
                raise PolicyFileError(f"{manifest_path} is not a {FORMAT} v{FORMAT_VERSION} manifest "
                                      f"(found {raw.get('format')!r} v{raw.get('format_version')!r}).")
            _check_feature_schema(raw.get("feature_schema"), expected_schema, directory)
        try:
            manifest = TierManifest.model_validate(raw)
        except ValidationError as exc:
            raise PolicyFileError(f"{manifest_path} is invalid: {_validation_message(exc)}") from exc
        if manifest.weights_sha256 != checksum:
            raise PolicyFileError(f"{weights_path} does not match the checksum in {manifest_path}: the file is corrupted or was replaced.")
        schema = FeatureSchema(**manifest.feature_schema.model_dump())
        hidden, layers, n_tiers = manifest.network.hidden, manifest.network.layers, len(manifest.tiers)
        network = TierPolicyNetwork(len(schema.names), n_tiers, hidden, layers)
        load_weights(network, weights_path, f"a {layers}x{hidden} policy network over {n_tiers} tiers", "retrain the policy")
        return cls(network, manifest.kappa, manifest.alpha, schema, list(manifest.normalization.mean),
                   list(manifest.normalization.std), [t.model_dump() for t in manifest.tiers], hidden, layers,
                   list(manifest.normalization.ignored or ()), manifest.training, manifest.guarantee)


def is_tier_policy(directory: str | Path) -> bool:
    """Whether ``directory`` holds a manifest of this format (anything unreadable: False, and the
    2-tier loader reports what is wrong with it)."""
    try:
        raw = json.loads((Path(directory) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT
