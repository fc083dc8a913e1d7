"""The learned allocator and its artifact: ``allocator.safetensors`` + ``allocator.json``, never pickled.

The network maps the normalised ``ALLOCATOR_SCHEMA`` observation to logits ℓ over the K tiers
(p_k: tier k is the cheapest whose step the verifier accepts). The manifest (format 2,
``kind: "allocator"``) records κ on the log-odds scale of P(cheapest > k), as the policy's κ; α, the tiers it was trained for
(name and parameters, cheapest first), the feature schema and its normalisation, the network's
shape, a training summary, the coverage guarantee and the weights' SHA-256. ``load`` refuses
missing, corrupted or out-of-range files, another feature schema, weights of another shape,
non-finite weights, and (given ``tiers``) an artifact of other tiers; ``save`` refuses to write
what ``load`` would refuse. A format 1 manifest (κ a probability) loads with its κ converted
(``policy.kappa_from_probability``) and a DeprecationWarning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import torch
from pydantic import BaseModel, Field, Strict, model_validator

from stepgraph.artifacts.manifest import (
    KINDS,
    FeatureSchemaModel,
    FiniteFloat,
    Normalization,
    PositiveFloat,
    Tier,
    check_checksum,
    load_weights,
    read_manifest,
    validate,
    write_artifact,
)
from stepgraph.artifacts.policy import Normalising, PolicyNetwork, kappa_from_probability, log_odds
from stepgraph.errors import PolicyFileError
from stepgraph.features import FeatureSchema, Observation
from stepgraph.routing.allocator import (
    ALLOCATOR_SCHEMA,
    Allocation,
    Allocator,
    AllocatorInput,
    tier_from_scores,
)

FORMAT = "stepgraph.allocator"
FORMAT_VERSION = 2
WEIGHTS_FILE, MANIFEST_FILE = KINDS["allocator"].weights_file, KINDS["allocator"].manifest_file


class AllocatorNetwork(PolicyNetwork):
    """The policy network without tier input over K tiers: ``escalate_probability`` is P(a tier above 0 is
    needed), which CPO's replay and calibration (``stepgraph.training.learning.cpo``) read as leaving the draft tier."""

    def __init__(self, n_features: int, n_tiers: int, hidden: int = 64, layers: int = 3) -> None:
        super().__init__(n_features, hidden, layers)
        last = self.net[-1]
        assert isinstance(last, torch.nn.Linear)
        self.net[-1] = torch.nn.Linear(last.in_features, n_tiers)  # after the 2-logit layer: the seeded weights stay
        self.n_tiers = n_tiers


class _Tier(Tier):
    parameters: Annotated[int, Strict(), Field(ge=0)]


class AllocatorManifest(BaseModel):
    """The schema of ``allocator.json`` (format 1: κ a probability in [0, 1], no ``kind``)."""

    format: Literal["stepgraph.allocator"]
    format_version: Literal[1, 2]
    kind: Literal["allocator"] = "allocator"
    kappa: FiniteFloat
    """threshold on the log-odds that a stronger tier is needed (format 1: on its probability)"""
    alpha: Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)]
    """the allowed miss rate, in (0, 1)"""
    tiers: list[_Tier] = Field(min_length=2)
    """the tiers the allocator chooses among, cheapest first"""
    feature_schema: FeatureSchemaModel
    mean: list[FiniteFloat]
    std: list[PositiveFloat]
    ignored: list[str] = Field(default_factory=list)
    hidden: Annotated[int, Strict(), Field(ge=1, le=4096)]
    layers: Annotated[int, Strict(), Field(ge=1, le=16)]
    training: dict[str, Any] = Field(default_factory=dict)
    guarantee: dict[str, Any] | None = None
    weights_sha256: str

    @model_validator(mode="after")
    def _fits_the_schema(self) -> Self:
        if self.format_version == 1 and not 0 <= self.kappa <= 1:
            raise ValueError(f"kappa: a format 1 κ is a probability in [0, 1] (found {self.kappa!r})")
        Normalization(mean=self.mean, std=self.std, ignored=self.ignored).check_fits(self.feature_schema)
        return self


@dataclass
class AllocatorArtifact(Normalising):
    """A trained allocator with what it needs to score new observations."""

    network: AllocatorNetwork
    kappa: float
    alpha: float
    tiers: list[dict[str, Any]]
    mean: list[float]
    std: list[float]
    hidden: int = 64
    layers: int = 3
    schema: FeatureSchema = field(default_factory=lambda: ALLOCATOR_SCHEMA)
    ignored: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    guarantee: dict[str, Any] | None = None

    @torch.no_grad()
    def probabilities(self, observation: Observation) -> list[float]:
        """p_k for one observation: the probability that tier k is the cheapest accepted."""
        return torch.softmax(self.network(self.normalise([self.schema.vector(observation)])), dim=-1)[0].tolist()

    def log_odds(self, observation: Observation) -> list[float]:
        """For each tier k, the log-odds of P(cheapest accepted > k), what κ thresholds: of the sums training
        calibrated κ on, so each decision is the one it calibrated (−inf for the strongest tier)."""
        probabilities = self.probabilities(observation)
        return [log_odds(sum(probabilities[k + 1 :])) for k in range(len(probabilities))]

    def _manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "allocator", "kappa": self.kappa, "alpha": self.alpha,
            "tiers": self.tiers, "feature_schema": self.schema.to_dict(), "mean": self.mean, "std": self.std,
            "ignored": self.ignored, "hidden": self.hidden, "layers": self.layers, "training": self.training,
            "guarantee": self.guarantee,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the artifact after checking that ``load`` will accept it.

        Raises:
            PolicyFileError: an invalid field, a network of another size than the tiers, or
                non-finite weights; nothing is written.
        """
        if self.network.n_tiers != len(self.tiers):
            raise PolicyFileError(f"Refusing to write an allocator into {directory}: its network scores "
                                  f"{self.network.n_tiers} tiers but it records {len(self.tiers)}.")
        return write_artifact(directory, "allocator", self.network, self._manifest(), AllocatorManifest)

    @classmethod
    def load(cls, directory: str | Path, tiers: Sequence[Mapping[str, Any]] | None = None) -> AllocatorArtifact:
        """Load and validate an artifact; with ``tiers`` (name and parameters, cheapest first), refuse one
        trained for tiers of other sizes (a model served under another name passes).

        Raises:
            PolicyFileError: names the file and what is wrong with it.
        """
        directory = Path(directory)
        raw, checksum = read_manifest(directory, "allocator")
        manifest = validate(AllocatorManifest, raw, directory, "allocator")
        if manifest.format_version == 1:
            manifest.kappa = kappa_from_probability(manifest.kappa)
            warnings.warn(f"{directory} holds an allocator in the old format {FORMAT} v1 (κ a probability); it loads with κ "
                          "on the log-odds scale. Rewrite it with `AllocatorArtifact.load(old).save(new)`.",
                          DeprecationWarning, stacklevel=2)
        schema = FeatureSchema(**manifest.feature_schema.model_dump())
        if schema != ALLOCATOR_SCHEMA:
            raise PolicyFileError(f"The allocator in {directory} was trained on {schema}, but this stepgraph computes "
                                  f"{ALLOCATOR_SCHEMA}; train it again (`stepgraph train --allocator`).")
        recorded = [t.model_dump() for t in manifest.tiers]
        if tiers is not None and [t["parameters"] for t in recorded] != [t.get("parameters") for t in tiers]:
            raise PolicyFileError(f"The allocator in {directory} was trained for the tiers {recorded}, but this graph's are "
                                  f"{list(tiers)} (other sizes or another number); train it on traces of these tiers.")
        check_checksum(directory, "allocator", manifest.weights_sha256, checksum)
        network = AllocatorNetwork(len(schema.names), len(recorded), manifest.hidden, manifest.layers)
        load_weights(network, directory, "allocator", f"a {manifest.layers}x{manifest.hidden} allocator over {len(recorded)} tiers")
        return cls(network, manifest.kappa, manifest.alpha, recorded, list(manifest.mean), list(manifest.std),
                   manifest.hidden, manifest.layers, schema, list(manifest.ignored), manifest.training, manifest.guarantee)


class LearnedAllocator(Allocator):
    """Applies a trained allocator artifact; its κ is the threshold training calibrated.

    Example:
        >>> allocator = LearnedAllocator.from_path("runs/allocator")  # doctest: +SKIP
    """

    name = "learned"

    def __init__(self, artifact: AllocatorArtifact) -> None:
        self.artifact = artifact

    @classmethod
    def from_path(cls, directory: str | Path, tiers: Sequence[Mapping[str, Any]] | None = None) -> LearnedAllocator:
        return cls(AllocatorArtifact.load(directory, tiers))

    def allocate(self, x: AllocatorInput) -> Allocation:
        if x.n_tiers != len(self.artifact.tiers):
            raise PolicyFileError(f"The allocator was trained for {len(self.artifact.tiers)} tiers; this graph has {x.n_tiers}.")
        tier, score = tier_from_scores(self.artifact.log_odds(x.observation), self.artifact.kappa, x.tier)
        return Allocation(tier, score, "non-finite score" if math.isnan(score) else None)
