"""The routing policy for K ≥ 2 tiers and its artifact: safetensors weights + a JSON manifest.

Two formats, one gate (``PolicyGate``): ``stepgraph.policy`` (``PolicyArtifact``, two tiers,
π(escalate | o)) and ``stepgraph.tier_policy`` (``TierPolicyArtifact``, K tiers: π(j | o, k) over
the tiers j ≥ k that may rewrite a step of tier k; escalate when 1 − π(k | o, k) ≥ κ, to the most
likely stronger tier). ``load_policy`` picks the reader by the manifest's format; both read and
write through ``stepgraph.artifacts``.

An artifact is a directory holding ``policy.safetensors`` (the MLP) and ``policy.json``
(κ, α, the feature schema it was trained on, the feature normalisation, the model names and a
training summary, and the SHA-256 of the weights).

The decision scale. Format 1 manifests hold κ as a probability: escalate iff π(escalate | o) ≥ κ.
Format 2 manifests also name their ``scale``; on ``"log_odds"`` the gate compares the log-odds of
escalation, log π(escalate | o) − log π(accept | o) (the network's logit difference), with κ, which
reads directly (0 is even odds, −3 about 5%) and keeps its resolution where the probability would
round to 0 or 1. Both describe the same rule (κ_log-odds = log(κ / (1 − κ))), so a format 1 artifact
loads and decides exactly as before. It is never pickled. ``PolicyArtifact.load``
refuses a directory whose files are missing, unreadable, corrupted, out of range (``Manifest``
is the schema), of another feature schema, or whose weights are not finite; ``save`` refuses to
write an artifact that ``load`` would refuse.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import numpy as np
import torch
from pydantic import BaseModel, Field, Strict, ValidationError, model_validator

from stepgraph.artifacts import (
    KINDS,
    FeatureSchemaModel,
    Network,
    Normalization,
    Tier,
    check_checksum,
    load_weights,
    read_manifest,
    validate,
    write_artifact,
)
from stepgraph.domain import Domain
from stepgraph.errors import PolicyFileError
from stepgraph.features import FeatureSchema, Observation, known_schema

FORMAT = "stepgraph.policy"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SCALES = ("probability", "log_odds")
WEIGHTS_FILE, MANIFEST_FILE = KINDS["policy"].weights_file, KINDS["policy"].manifest_file

class _PolicyManifest(BaseModel):
    """What the 2-tier and the K-tier ``policy.json`` share."""

    alpha: Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)]
    """the allowed miss rate, in (0, 1)"""
    feature_schema: FeatureSchemaModel
    normalization: Normalization
    network: Network
    training: dict[str, Any] = Field(default_factory=dict)
    guarantee: dict[str, Any] | None = None
    """the coverage the artifact may claim (``{"type": "split-conformal" | "none", ...}``); None before it was recorded"""
    domain: Domain | None = None
    """the out-of-domain signal's tier and threshold (``stepgraph.domain``); absent: the signal is off"""
    weights_sha256: str


class Manifest(_PolicyManifest):
    """The schema of ``policy.json``: types and ranges a policy needs to route safely."""

    format: Literal["stepgraph.policy"]
    format_version: Literal[1, 2]
    scale: Literal["probability", "log_odds"] = "probability"
    """what κ thresholds: π(escalate | o), or its log-odds (format 1 manifests: always the probability)"""
    kappa: Annotated[float, Strict(), Field(allow_inf_nan=False)]
    """the threshold: in [0, 1] on the probability scale, any finite number on the log-odds scale"""
    models: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fits_the_schema(self) -> Self:
        if self.format_version == 1 and self.scale != "probability":
            raise ValueError("scale: format_version 1 manifests hold a probability κ; write scale "
                             f"{self.scale!r} with format_version 2")
        if self.scale == "probability" and not 0 <= self.kappa <= 1:
            raise ValueError(f"kappa: a probability κ must be in [0, 1] (found {self.kappa!r})")
        self.normalization.check_fits(self.feature_schema)
        return self


def _check_feature_schema(stored: Any, expected: FeatureSchema | None, directory: Path) -> None:
    """Refuse another feature schema first: it explains normalisation lists of another length too."""
    try:
        schema = FeatureSchema(**FeatureSchemaModel.model_validate(stored).model_dump())
    except ValidationError:
        return  # the manifest's validation names what is wrong with it
    if expected is not None and schema != expected:
        raise PolicyFileError(
            f"The policy in {directory} was trained on feature schema {schema}, but this graph computes "
            f"{expected}. Retrain the policy (`stepgraph train`) on traces of this schema."
        )
    if expected is None and known_schema(schema.name, schema.version, schema.names) is None:
        raise PolicyFileError(
            f"The policy in {directory} was trained on feature schema {schema}, which this stepgraph does not "
            "compute. Retrain the policy (`stepgraph train`) on traces of a current schema."
        )


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> torch.nn.Sequential:
    """``layers`` linear layers with tanh between them: the policy networks' body."""
    widths = [inputs] + [hidden] * (layers - 1) + [outputs]
    modules: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        modules.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            modules.append(torch.nn.Tanh())
    return torch.nn.Sequential(*modules)


def _read_policy(directory: Path, model: type[Manifest | TierManifest], fmt: str, versions: Sequence[int],
                 expected_schema: FeatureSchema | None) -> Any:
    """A validated policy manifest of format ``fmt`` (refusing another format or feature schema first) and its
    feature schema, its weights' checksum checked."""
    raw, checksum = read_manifest(directory, "policy")
    if isinstance(raw, dict):
        if raw.get("format") != fmt or raw.get("format_version") not in versions:
            what = f"{fmt} v{versions[0]} manifest" if len(versions) == 1 else \
                f"{fmt} manifest of version {' or '.join(map(str, versions))}"
            raise PolicyFileError(f"{directory / MANIFEST_FILE} is not a {what} "
                                  f"(found {raw.get('format')!r} v{raw.get('format_version')!r}).")
        _check_feature_schema(raw.get("feature_schema"), expected_schema, directory)
    manifest = validate(model, raw, directory, "policy")
    check_checksum(directory, "policy", manifest.weights_sha256, checksum)
    return manifest, FeatureSchema(**manifest.feature_schema.model_dump())


class PolicyNetwork(torch.nn.Module):
    """An MLP from normalised features to the logits of (accept, escalate).

    Args:
        n_features: input width.
        hidden: units per hidden layer (paper: 64).
        layers: number of linear layers (paper: 3, i.e. two hidden layers).
    """

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.net = mlp(n_features, hidden, layers, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def escalate_probability(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=-1)[..., 1]

    def escalate_log_odds(self, x: torch.Tensor) -> torch.Tensor:
        """log π(escalate | o) − log π(accept | o): the logit difference, finite where the probability saturates."""
        logits = self.forward(x)
        return logits[..., 1] - logits[..., 0]


class Normalising:
    """Feature normalisation, shared by the 2-tier and the K-tier policy."""

    schema: FeatureSchema
    mean: list[float]
    std: list[float]
    ignored: list[str]

    def _normalisation(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Mean, std and ignored columns as tensors, built once per value (the gate asks every step)."""
        key = (tuple(self.mean), tuple(self.std), tuple(self.ignored))
        cached = self.__dict__.get("_normalisation_cache")
        if cached is None or cached[0] != key:
            cached = (key, torch.tensor(self.mean), torch.tensor(self.std), [self.schema.names.index(n) for n in self.ignored])
            self.__dict__["_normalisation_cache"] = cached
        return cached[1], cached[2], cached[3]

    def normalise(self, rows: Sequence[Sequence[float]]) -> torch.Tensor:
        """Standardise feature rows; a missing (NaN) or ignored feature becomes its training mean (0)."""
        mean, std, ignored = self._normalisation()
        x = (torch.tensor(rows, dtype=torch.float32) - mean) / std
        x[..., ignored] = 0.0
        return torch.nan_to_num(x, nan=0.0)


@dataclass
class PolicyArtifact(Normalising):
    """A trained policy with everything needed to apply it to new observations."""

    network: PolicyNetwork
    kappa: float
    alpha: float
    schema: FeatureSchema
    mean: list[float]
    std: list[float]
    hidden: int = 64
    layers: int = 3
    models: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    """Features the network never saw (absent from every training step, or left out on purpose):
    always fed as 0, so a backend that does report them gets the decisions training calibrated."""
    guarantee: dict[str, Any] | None = None
    """The coverage κ was calibrated to hold: ``{"type": "split-conformal", "coverage": 1 − α, ...}``,
    or ``{"type": "none", "reason": ...}`` (too few calibration episodes); None in older artifacts."""
    scale: str = "probability"
    """What κ thresholds: ``"probability"`` (π(escalate | o)) or ``"log_odds"`` (see the module docstring)."""
    format_version: int = FORMAT_VERSION
    """The manifest format it was loaded from (1: probability κ only); ``save`` writes format 2."""
    domain: Domain | None = None
    """The out-of-domain signal's tier and threshold (``stepgraph.domain``); None: off (older artifacts)."""

    @torch.no_grad()
    def escalate_probability(self, observation: Observation) -> float:
        """π(escalate | o) for one observation keyed by the schema's feature names."""
        return float(self.network.escalate_probability(self.normalise([self.schema.vector(observation)]))[0])

    def score(self, observation: Observation, tier: int = 0) -> float:
        """What κ is compared with: π(escalate | o), or its log-odds on the log-odds scale.

        The log-odds are computed in NumPy: one observation through a small MLP is dominated by
        per-operation overhead, which NumPy's is a fraction of torch's (the gate runs every step).
        The probability scale keeps torch, so format 1 artifacts compute exactly as they did.
        """
        if self.scale != "log_odds":
            return self.escalate_probability(observation)
        mean, std, ignored, layers = self._numpy_network()
        x = (np.asarray(self.schema.vector(observation), dtype=np.float32) - mean) / std
        x[ignored] = 0.0
        x = np.nan_to_num(x, nan=0.0)
        for i, (weight, bias) in enumerate(layers):
            x = weight @ x + bias
            if i < len(layers) - 1:
                x = np.tanh(x)
        return float(x[1] - x[0])

    def _numpy_network(self) -> tuple[np.ndarray, np.ndarray, list[int], list[tuple[np.ndarray, np.ndarray]]]:
        mean, std, ignored = self._normalisation()
        cached = self.__dict__.get("_numpy_cache")
        if cached is None or cached[0] is not self.network or cached[1] is not mean:
            linears = [m for m in self.network.net if isinstance(m, torch.nn.Linear)]
            layers = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in linears]
            cached = (self.network, mean, (mean.numpy(), std.numpy(), ignored, layers))
            self.__dict__["_numpy_cache"] = cached
        return cached[2]

    def escalation_tier(self, observation: Observation, tier: int) -> int | None:
        """Two tiers: an escalated step goes to the next tier up (None)."""
        return None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``score`` over rows of normalised features."""
        with torch.no_grad():
            if self.scale == "log_odds":
                return self.network.escalate_log_odds(x)
            return self.network.escalate_probability(x)

    def save(self, directory: str | Path) -> Path:
        """Write the artifact, after checking that ``load`` will accept it.

        Raises:
            PolicyFileError: the artifact is invalid (e.g. a probability κ not in [0, 1], non-finite weights);
                nothing is written.
        """
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "scale": self.scale, "kappa": self.kappa,
            **_shared_fields(self), "models": self.models, **_domain_field(self),
        }
        return write_artifact(directory, "policy", self.network, manifest, Manifest,
                              diverged=" (training diverged; lower --delta or check the traces)")

    @classmethod
    def load(cls, directory: str | Path, expected_schema: FeatureSchema | None = None) -> PolicyArtifact:
        """Load and validate an artifact.

        Raises:
            PolicyFileError: files missing, unreadable or corrupted, another format version, a
                value out of its range (see ``Manifest``), non-finite weights, or a feature schema
                other than ``expected_schema`` (None: any schema ``stepgraph.features.SCHEMAS``
                knows). The message names the file and the field.
        """
        directory = Path(directory)
        manifest, schema = _read_policy(directory, Manifest, FORMAT, READABLE_VERSIONS, expected_schema)
        mean, std = manifest.normalization.mean, manifest.normalization.std
        ignored = manifest.normalization.ignored
        if ignored is None:  # manifests from before "ignored" marked a never-recorded feature as mean 0, std 1
            ignored = [n for n, m, sd in zip(schema.names, mean, std) if (m, sd) == (0.0, 1.0)]
        hidden, layers = manifest.network.hidden, manifest.network.layers
        network = PolicyNetwork(len(schema.names), hidden, layers)
        load_weights(network, directory, "policy", f"a {layers}x{hidden} policy network")
        return cls(network, manifest.kappa, manifest.alpha, schema, list(mean), list(std), hidden, layers, manifest.models,
                   manifest.training, list(ignored), manifest.guarantee, manifest.scale, manifest.format_version, manifest.domain)


def _shared_fields(artifact: PolicyArtifact | TierPolicyArtifact) -> dict[str, Any]:
    """The manifest fields of ``_PolicyManifest``, from either policy."""
    return {"alpha": artifact.alpha, "feature_schema": artifact.schema.to_dict(),
            "normalization": {"mean": artifact.mean, "std": artifact.std, "ignored": artifact.ignored},
            "network": {"hidden": artifact.hidden, "layers": artifact.layers}, "training": artifact.training,
            "guarantee": artifact.guarantee}


def _domain_field(artifact: PolicyArtifact | TierPolicyArtifact) -> dict[str, Any]:
    """The optional ``domain`` field, last in the manifest, only where the artifact has one (older readers never see it)."""
    return {} if artifact.domain is None else {"domain": artifact.domain.model_dump()}


TIER_FORMAT = "stepgraph.tier_policy"
TIER_FORMAT_VERSION = 1
MAX_TIERS = 16
MASKED = -1e9
"""The logit of a tier below the current one: probability 0, and still finite for the KL's arithmetic."""


class TierManifest(_PolicyManifest):
    """The schema of a K-tier ``policy.json``."""

    format: Literal["stepgraph.tier_policy"]
    format_version: Literal[1]
    kappa: Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
    """the threshold on π(escalate | o, k) = 1 − π(k | o, k), in [0, 1]"""
    tiers: list[Tier] = Field(min_length=2, max_length=MAX_TIERS)
    """the models the policy routes between, cheapest first"""

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
        self.net = mlp(n_features + n_tiers, hidden, layers, n_tiers)

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
class TierPolicyArtifact(Normalising):
    """A trained K-tier policy with what it needs to route new observations.

    The network reads the step's features and the tier k that wrote it (one-hot) and gives a
    distribution over the tiers j ≥ k, where j = k means "accept"; tiers below k are masked out.
    """

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
    domain: Domain | None = None
    """The out-of-domain signal's tier and threshold (``stepgraph.domain``); None: off."""

    @property
    def models(self) -> dict[str, Any]:
        """The tiers as the 2-tier artifact's ``models`` reads them, for the checks shared by both."""
        return {"draft": self.tiers[0], "target": self.tiers[-1], "tiers": self.tiers}

    scale: ClassVar[str] = "probability"
    """κ thresholds π(escalate | o, k)."""

    @torch.no_grad()
    def probabilities(self, observation: Observation, tier: int) -> list[float]:
        """π(j | o, tier) for every tier j (0 below ``tier``)."""
        if not 0 <= tier < len(self.tiers):
            raise ValueError(f"tier {tier} is outside this policy's {len(self.tiers)} tiers.")
        x = tier_inputs(self.normalise([self.schema.vector(observation)]), torch.tensor([tier]), len(self.tiers))
        return [float(p) for p in self.network.probabilities(x)[0]]

    def score(self, observation: Observation, tier: int = 0) -> float:
        """π(escalate | o, k) = 1 − π(k | o, k); NaN for a tier the policy does not route from (the gate escalates it)."""
        if not 0 <= tier < len(self.tiers) - 1:
            return math.nan
        return 1.0 - self.probabilities(observation, tier)[tier]

    def escalation_tier(self, observation: Observation, tier: int) -> int | None:
        """The stronger tier π finds most likely for a step of ``tier`` that escalates."""
        if not 0 <= tier < len(self.tiers) - 1:
            return None
        probs = self.probabilities(observation, tier)
        return max(range(tier + 1, len(probs)), key=lambda j: probs[j])

    def save(self, directory: str | Path) -> Path:
        """Write the artifact after checking that ``load`` will accept it.

        Raises:
            PolicyFileError: an invalid manifest or non-finite weights; nothing is written.
        """
        if len(self.tiers) != self.network.n_tiers:
            raise PolicyFileError(f"Refusing to write a tier policy into {directory}: it names {len(self.tiers)} tiers "
                                  f"but its network routes between {self.network.n_tiers}.")
        manifest = {
            "format": TIER_FORMAT, "format_version": TIER_FORMAT_VERSION, "kappa": self.kappa, **_shared_fields(self),
            "tiers": self.tiers, **_domain_field(self),
        }
        return write_artifact(directory, "policy", self.network, manifest, TierManifest, what="a tier policy")

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
        manifest, schema = _read_policy(directory, TierManifest, TIER_FORMAT, (TIER_FORMAT_VERSION,), expected_schema)
        hidden, layers, n_tiers = manifest.network.hidden, manifest.network.layers, len(manifest.tiers)
        network = TierPolicyNetwork(len(schema.names), n_tiers, hidden, layers)
        load_weights(network, directory, "policy", f"a {layers}x{hidden} policy network over {n_tiers} tiers")
        return cls(network, manifest.kappa, manifest.alpha, schema, list(manifest.normalization.mean),
                   list(manifest.normalization.std), [t.model_dump() for t in manifest.tiers], hidden, layers,
                   list(manifest.normalization.ignored or ()), manifest.training, manifest.guarantee, manifest.domain)


LOADERS: dict[str, Callable[[Path, FeatureSchema | None], PolicyArtifact | TierPolicyArtifact]] = {
    FORMAT: PolicyArtifact.load, TIER_FORMAT: TierPolicyArtifact.load}
"""The policy reader of each manifest format (anything else: the 2-tier reader says what is wrong)."""


def load_policy(directory: str | Path, expected_schema: FeatureSchema | None = None) -> PolicyArtifact | TierPolicyArtifact:
    """Load the policy artifact in ``directory``, 2-tier or K-tier by its manifest's format.

    Raises:
        PolicyFileError: see ``PolicyArtifact.load`` and ``TierPolicyArtifact.load``.
    """
    raw, _ = read_manifest(directory, "policy")
    fmt = raw.get("format") if isinstance(raw, dict) else None
    return LOADERS.get(fmt if isinstance(fmt, str) else FORMAT, PolicyArtifact.load)(Path(directory), expected_schema)
