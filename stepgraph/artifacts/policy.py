"""The routing policy for K ≥ 2 tiers and its artifact: safetensors weights + a JSON manifest.

One class (``PolicyArtifact``), one format (``stepgraph.artifacts.policy`` version 3, ``kind: "policy"``),
one κ scale. The network maps a step's normalised features, and, where ``network.tier_input``
says so, the one-hot tier k that wrote the step, to logits ℓ over the K tiers (tier k accepts,
j > k rewrites the step; tiers below k are masked). The gate escalates iff the log-odds of
escalation

    log π(j > k | o, k) − log π(k | o, k) = logsumexp_{j > k} ℓ_j − ℓ_k

is ≥ κ, to the likeliest stronger tier. κ is always this log-odds: it reads directly (0 is even
odds, −3 about 5%) and keeps its resolution where a probability rounds to 0 or 1. ``routing``
(``Routing``, optional) may instead send an escalated step to the next tier up and raise the bar
per deciding tier: tier k escalates iff the log-odds − ``tier_offsets[k]`` is ≥ κ. Two tiers is
K = 2, where the log-odds is the logit difference ℓ_1 − ℓ_0; a network without tier input (the
2-tier CPO network) reads every step as tier 0's.

An artifact is a directory holding ``policy.safetensors`` and ``policy.json`` (κ, α, the tiers,
the feature schema it was trained on, the feature normalisation, the network's shape, a training
summary, the coverage guarantee and the SHA-256 of the weights). It is never pickled. ``load``
refuses missing, unreadable, corrupted or out-of-range files (``Manifest`` is the schema), another
feature schema or non-finite weights; ``save`` refuses to write what ``load`` would refuse.

Older formats load converted, with one DeprecationWarning saying how to rewrite them
(``PolicyArtifact.load(old).save(new)``): ``stepgraph.artifacts.policy`` v1 and v2 (two tiers; κ a
probability of escalation, or on v2's ``"log_odds"`` scale) and ``stepgraph.tier_policy`` v1
(K tiers, κ a probability). A probability κ becomes ``kappa_from_probability(κ)``; the weights
are read as they are, so the decisions stay those of the old code up to float rounding at the
threshold itself (``tests/test_legacy_formats.py`` checks them).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import numpy as np
import torch
from pydantic import BaseModel, Field, Strict, ValidationError, model_validator

from stepgraph.artifacts.manifest import (
    KINDS,
    FeatureSchemaModel,
    FiniteFloat,
    Normalization,
    Tier,
    check_checksum,
    load_weights,
    read_manifest,
    validate,
    write_artifact,
)
from stepgraph.domain import Domain
from stepgraph.errors import ConfigError, PolicyFileError
from stepgraph.features import FeatureSchema, Observation, known_schema

FORMAT = "stepgraph.policy"
FORMAT_VERSION = 3
WEIGHTS_FILE, MANIFEST_FILE = KINDS["policy"].weights_file, KINDS["policy"].manifest_file
MAX_TIERS = 16
MASKED = -1e9
"""The logit of a tier below the current one: probability 0, and still finite for the KL's arithmetic."""
ALWAYS = -sys.float_info.max
"""The log-odds κ of a probability κ of 0 (escalate every step): below every finite score."""
ROUNDS_TO_ONE = 1.0 - 2.0**-24
"""The largest float32 below 1: a float32 probability ≥ it is 1, so a probability κ of 1 means log-odds ≥ its logit."""


def log_odds(p: float) -> float:
    """log(p / (1 − p)): −inf at 0, inf at 1, and as monotone as the floats it is given."""
    if p <= 0:
        return -math.inf
    return math.inf if p >= 1 else math.log(p) - math.log1p(-p)


def kappa_from_probability(kappa: float) -> float:
    """A κ on the probability scale (escalate iff π(escalate) ≥ κ) as the same threshold on the log-odds scale.

    0 escalates everything (``ALWAYS``); κ ≥ 1, which the old float32 code met only where π rounded to 1,
    becomes the logit of the largest float32 below 1 (that rounding's edge, on the safe side).
    """
    return ALWAYS if kappa <= 0 else log_odds(min(kappa, ROUNDS_TO_ONE))


class NetworkShape(BaseModel):
    hidden: Annotated[int, Strict(), Field(ge=1, le=4096)]
    layers: Annotated[int, Strict(), Field(ge=1, le=16)]
    tier_input: Annotated[bool, Strict()] = False
    """whether the network reads the one-hot tier of the step after its features"""


class Routing(BaseModel):
    """How the gate acts on the score beyond κ; the defaults are the plain rule (and what older manifests mean)."""

    escalate_to: Literal["likeliest", "next"] = "likeliest"
    """an escalated step goes to the stronger tier π finds likeliest, or always to the next tier up"""
    tier_offsets: list[FiniteFloat] = Field(default_factory=list, max_length=MAX_TIERS - 1)
    """per deciding tier (cheapest first; missing ones 0), subtracted from its log-odds before the comparison with κ.
    A positive offset on a dearer tier asks more doubt before paying for the tier above it."""

    def offset(self, tier: int) -> float:
        return self.tier_offsets[tier] if 0 <= tier < len(self.tier_offsets) else 0.0

    @property
    def is_plain(self) -> bool:
        return self.escalate_to == "likeliest" and not any(self.tier_offsets)


class _Common(BaseModel):
    """What every policy manifest holds, of any format."""

    alpha: Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)]
    """the allowed miss rate, in (0, 1)"""
    feature_schema: FeatureSchemaModel
    normalization: Normalization
    training: dict[str, Any] = Field(default_factory=dict)
    guarantee: dict[str, Any] | None = None
    """the coverage the artifact may claim (``{"type": "split-conformal" | "none", ...}``); None before it was recorded"""
    domain: Domain | None = None
    """the out-of-domain signal's tier and threshold (``stepgraph.domain``); absent: the signal is off"""
    weights_sha256: str

    @model_validator(mode="after")
    def _fits_the_schema(self) -> Self:
        self.normalization.check_fits(self.feature_schema)
        return self


class Manifest(_Common):
    """The schema of ``policy.json`` (format 3): types and ranges a policy needs to route safely."""

    format: Literal["stepgraph.policy"]
    format_version: Literal[3]
    kind: Literal["policy"]
    kappa: FiniteFloat
    """the threshold on the log-odds of escalation"""
    n_tiers: Annotated[int, Strict(), Field(ge=2, le=MAX_TIERS)]
    """K, the number of tiers the network scores"""
    tiers: list[Tier] = Field(default_factory=list, max_length=MAX_TIERS)
    """the models the policy routes between, cheapest first (empty: not recorded)"""
    network: NetworkShape
    routing: Routing = Field(default_factory=Routing)
    """escalation target and per-tier offsets (absent: the plain rule)"""

    @model_validator(mode="after")
    def _tiers_fit(self) -> Self:
        if self.tiers and len(self.tiers) != self.n_tiers:
            raise ValueError(f"tiers: {len(self.tiers)} tiers recorded for a network over n_tiers = {self.n_tiers}")
        if len(self.routing.tier_offsets) > self.n_tiers - 1:
            raise ValueError(f"routing.tier_offsets: {len(self.routing.tier_offsets)} offsets for the {self.n_tiers - 1} "
                             "deciding tiers (every tier but the strongest)")
        return self


class ManifestV2(_Common):
    """The 2-tier ``policy.json`` of formats 1 and 2 (read only)."""

    format: Literal["stepgraph.policy"]
    format_version: Literal[1, 2]
    scale: Literal["probability", "log_odds"] = "probability"
    kappa: FiniteFloat
    network: NetworkShape
    models: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _scale_fits(self) -> Self:
        if self.format_version == 1 and self.scale != "probability":
            raise ValueError("scale: format_version 1 manifests hold a probability κ; write scale "
                             f"{self.scale!r} with format_version 2")
        if self.scale == "probability" and not 0 <= self.kappa <= 1:
            raise ValueError(f"kappa: a probability κ must be in [0, 1] (found {self.kappa!r})")
        return self


class TierManifest(_Common):
    """The K-tier ``policy.json`` of ``stepgraph.tier_policy`` v1 (read only): κ thresholds 1 − π(k | o, k)."""

    format: Literal["stepgraph.tier_policy"]
    format_version: Literal[1]
    kappa: Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
    tiers: list[Tier] = Field(min_length=2, max_length=MAX_TIERS)
    network: NetworkShape


def _v3(manifest: ManifestV2 | TierManifest) -> dict[str, Any]:
    """An old manifest as the format-3 manifest of the same decisions."""
    old = manifest.model_dump()
    if isinstance(manifest, TierManifest):
        tiers, tier_input, kappa = old["tiers"], True, kappa_from_probability(manifest.kappa)
    else:
        tiers, tier_input = list(manifest.models.get("tiers") or []), False
        kappa = manifest.kappa if manifest.scale == "log_odds" else kappa_from_probability(manifest.kappa)
    normalization, schema = old["normalization"], old["feature_schema"]
    if normalization["ignored"] is None:  # manifests from before "ignored" marked a never-recorded feature as mean 0, std 1
        normalization["ignored"] = [n for n, m, s in zip(schema["names"], normalization["mean"], normalization["std"])
                                    if (m, s) == (0.0, 1.0)]
    old["training"]["format_before"] = {"format": manifest.format, "format_version": manifest.format_version,
                                        "kappa": manifest.kappa, "scale": getattr(manifest, "scale", "probability")}
    return {**{k: old[k] for k in _Common.model_fields}, "format": FORMAT, "format_version": FORMAT_VERSION,
            "kind": "policy", "kappa": kappa, "n_tiers": len(tiers) if tier_input else 2, "tiers": tiers,
            "network": {**old["network"], "tier_input": tier_input}}


LEGACY: dict[tuple[Any, Any], type[ManifestV2 | TierManifest]] = {
    (FORMAT, 1): ManifestV2, (FORMAT, 2): ManifestV2, ("stepgraph.tier_policy", 1): TierManifest}
"""The readers of the formats before 3, by (format, format_version): their manifests convert with ``_v3``."""


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


def _read_manifest(directory: Path, expected_schema: FeatureSchema | None) -> Manifest:
    """The validated format-3 manifest of ``directory`` (an older one converted, with a DeprecationWarning),
    its weights' checksum checked; another format or feature schema is refused first."""
    raw, checksum = read_manifest(directory, "policy")
    if isinstance(raw, dict):
        found = (raw.get("format"), raw.get("format_version"))
        if found != (FORMAT, FORMAT_VERSION) and found not in LEGACY:
            raise PolicyFileError(f"{directory / MANIFEST_FILE} is not a policy manifest this stepgraph reads (found "
                                  f"{found[0]!r} v{found[1]!r}): it reads {FORMAT} v{FORMAT_VERSION}, and the older "
                                  f"{FORMAT} v1, v2 and stepgraph.tier_policy v1.")
        _check_feature_schema(raw.get("feature_schema"), expected_schema, directory)
        if found in LEGACY:
            raw = _v3(validate(LEGACY[found], raw, directory, "policy"))
            warnings.warn(f"{directory} holds a policy in the old format {found[0]} v{found[1]}; it loads converted (κ on "
                          "the log-odds scale, the same decisions). Rewrite it in format 3 with "
                          "`PolicyArtifact.load(old).save(new)` (stepgraph.artifacts.policy).", DeprecationWarning, stacklevel=3)
    manifest: Manifest = validate(Manifest, raw, directory, "policy")
    check_checksum(directory, "policy", manifest.weights_sha256, checksum)
    return manifest


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> torch.nn.Sequential:
    """``layers`` linear layers with tanh between them: the policy networks' body."""
    widths = [inputs] + [hidden] * (layers - 1) + [outputs]
    modules: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        modules.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            modules.append(torch.nn.Tanh())
    return torch.nn.Sequential(*modules)


class PolicyNetwork(torch.nn.Module):
    """An MLP from normalised features (with ``tier_input``, then the one-hot current tier) to logits over K tiers.

    With tier input, logits of tiers below the current one are ``MASKED``, so every distribution it
    gives is over "accept" (the current tier) and the stronger tiers; without, the current tier is 0.

    Args:
        n_features: feature width.
        hidden: units per hidden layer (paper: 64).
        layers: number of linear layers (paper: 3, i.e. two hidden layers).
        n_tiers: K, the number of tiers (2: the logits of accept and escalate).
        tier_input: whether the input ends with the one-hot tier that wrote the step (``tier_inputs``).
    """

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 3, n_tiers: int = 2, tier_input: bool = False) -> None:
        super().__init__()
        self.n_features, self.n_tiers, self.tier_input = n_features, n_tiers, tier_input
        self.net = mlp(n_features + (n_tiers if tier_input else 0), hidden, layers, n_tiers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if not self.tier_input:
            return logits
        allowed = torch.cumsum(x[..., self.n_features :], dim=-1) > 0.5  # tiers at or above the current one
        return logits.masked_fill(~allowed, MASKED)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=-1)

    def _current(self, x: torch.Tensor) -> torch.Tensor:
        if self.tier_input:
            return x[..., self.n_features :].argmax(dim=-1, keepdim=True)
        return torch.zeros((*x.shape[:-1], 1), dtype=torch.long)

    def escalate_probability(self, x: torch.Tensor) -> torch.Tensor:
        """π(a stronger tier | x): 1 − π(current | x) with tier input, else the sum over the tiers above 0."""
        if not self.tier_input:  # the sum, not 1 − p_0, which would round a confident "accept" to 0
            return self.probabilities(x)[..., 1:].sum(-1)
        return 1.0 - self.probabilities(x).gather(-1, self._current(x)).squeeze(-1)

    def escalate_log_odds(self, x: torch.Tensor) -> torch.Tensor:
        """logsumexp_{j > k} ℓ_j − ℓ_k: what κ thresholds, finite where the probability saturates (ℓ_1 − ℓ_0 for K = 2)."""
        logits, current = self.forward(x), self._current(x)
        above = torch.arange(self.n_tiers) > current
        return torch.logsumexp(logits.masked_fill(~above, -math.inf), dim=-1) - logits.gather(-1, current).squeeze(-1)


def tier_inputs(features: torch.Tensor, tiers: torch.Tensor, n_tiers: int) -> torch.Tensor:
    """The tier-input network's input: normalised feature rows with the one-hot tier that wrote each step."""
    return torch.cat([features, torch.nn.functional.one_hot(tiers.long(), n_tiers).to(features.dtype)], dim=-1)


class Normalising:
    """Feature normalisation, shared by the policy and the allocator."""

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
    """A trained policy for K ≥ 2 tiers with everything needed to apply it to new observations."""

    network: PolicyNetwork
    kappa: float
    """the threshold on the log-odds of escalation (see the module docstring)"""
    alpha: float
    schema: FeatureSchema
    mean: list[float]
    std: list[float]
    hidden: int = 64
    layers: int = 3
    tiers: list[dict[str, Any]] = field(default_factory=list)
    """``{"name", "parameters"}`` of each tier, cheapest first (empty: not recorded)"""
    training: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    """Features the network never saw (absent from every training step, or left out on purpose):
    always fed as 0, so a backend that does report them gets the decisions training calibrated."""
    guarantee: dict[str, Any] | None = None
    """The coverage κ was calibrated to hold: ``{"type": "split-conformal", "coverage": 1 − α, ...}``,
    or ``{"type": "none", "reason": ...}`` (too few calibration episodes); None in older artifacts."""
    domain: Domain | None = None
    """The out-of-domain signal's tier and threshold (``stepgraph.domain``); None: off (older artifacts)."""
    routing: Routing = field(default_factory=Routing)
    """Where an escalated step goes and each deciding tier's offset (``Routing``); the default is the plain rule."""
    scale: InitVar[str | None] = None
    """Deprecated: κ is always on the log-odds scale; ``scale="probability"`` converts a probability κ."""

    def __post_init__(self, scale: str | None) -> None:
        if scale is not None:
            warnings.warn("PolicyArtifact(scale=...) is deprecated: κ is always on the log-odds scale; pass "
                          "kappa_from_probability(κ) for a probability.", DeprecationWarning, stacklevel=3)
            if scale == "probability":
                self.kappa = kappa_from_probability(self.kappa)

    @property
    def models(self) -> dict[str, Any]:
        """The tiers as ``{"tiers": [...]}`` (what format 2 recorded as ``models``), for ``stepgraph.artifacts.tiers``' checks."""
        return {"tiers": self.tiers}

    def _numpy_network(self) -> tuple[np.ndarray, np.ndarray, list[int], list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Normalisation and layers as NumPy arrays, the first layer split into its feature and tier columns."""
        mean, std, ignored = self._normalisation()
        cached = self.__dict__.get("_numpy_cache")
        if cached is None or cached[0] is not self.network or cached[1] is not mean:
            linears = [m for m in self.network.net if isinstance(m, torch.nn.Linear)]
            layers = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in linears]
            first, n = layers[0][0], self.network.n_features
            layers[0] = (np.ascontiguousarray(first[:, :n]), layers[0][1])
            cached = (self.network, mean, (mean.numpy(), std.numpy(), ignored, layers, np.ascontiguousarray(first[:, n:])))
            self.__dict__["_numpy_cache"] = cached
        return cached[2]

    def _logits(self, observation: Observation, tier: int) -> np.ndarray:
        """The network's logits for one observation of ``tier``, in NumPy.

        One observation through a small MLP is dominated by per-operation overhead, which NumPy's is
        a fraction of torch's (the gate runs every step).
        """
        mean, std, ignored, layers, tier_columns = self._numpy_network()
        x = (np.asarray(self.schema.vector(observation), dtype=np.float32) - mean) / std
        x[ignored] = 0.0
        x = np.nan_to_num(x, nan=0.0)
        for i, (weight, bias) in enumerate(layers):
            x = weight @ x + bias
            if i == 0 and self.network.tier_input:
                x = x + tier_columns[:, tier]
            if i < len(layers) - 1:
                x = np.tanh(x)
        return x

    def _routes(self, tier: int) -> int | None:
        """The tier the network reads a step of ``tier`` as (0 without tier input); None where it does not route."""
        k = tier if self.network.tier_input else 0
        return k if 0 <= k < self.network.n_tiers - 1 else None

    def with_routing(self, escalate_to: str | None = None, tier_offsets: Sequence[float] | None = None) -> PolicyArtifact:
        """A copy routing with ``escalate_to`` and ``tier_offsets`` (each kept as recorded when None); this one when both are.

        Raises:
            ConfigError: more offsets than deciding tiers, an unknown ``escalate_to`` or a non-finite offset.
        """
        if escalate_to is None and tier_offsets is None:
            return self
        deciding = self.network.n_tiers - 1
        if tier_offsets is not None and len(tier_offsets) > deciding:
            raise ConfigError(f"tier_offsets (--tier-offsets) takes at most one offset per deciding tier ({deciding} for this "
                              f"{self.network.n_tiers}-tier policy), got {len(tier_offsets)}.")
        changes = {"escalate_to": escalate_to, "tier_offsets": None if tier_offsets is None else list(tier_offsets)}
        try:
            routing = Routing.model_validate(self.routing.model_dump() | {k: v for k, v in changes.items() if v is not None})
        except ValidationError as error:
            raise ConfigError(f"routing: {error.errors()[0]['msg']} (escalate_to {escalate_to!r}, tier_offsets {tier_offsets!r}).") from None
        return dataclasses.replace(self, routing=routing)

    def escalation_log_odds(self, observation: Observation, tier: int = 0) -> float:
        """The log-odds of escalation, logsumexp_{j > k} ℓ_j − ℓ_k; NaN for a tier the policy does not route from."""
        k = self._routes(tier)
        if k is None:
            return math.nan
        logits = self._logits(observation, k)
        above = logits[k + 1 :]
        top = above.max()
        return float(top + np.log(np.exp(above - top).sum()) - logits[k])

    def score(self, observation: Observation, tier: int = 0) -> float:
        """What the gate compares with κ: the log-odds of escalation less the tier's ``routing`` offset; NaN for a tier
        the policy does not route from (the gate escalates it)."""
        k = self._routes(tier)
        return math.nan if k is None else self.escalation_log_odds(observation, tier) - self.routing.offset(k)

    def probabilities(self, observation: Observation, tier: int = 0) -> list[float]:
        """π(j | o, k) for every tier j (0 below the tier k the network reads the step as)."""
        k = tier if self.network.tier_input else 0
        if not 0 <= k < self.network.n_tiers:
            raise ValueError(f"tier {tier} is outside this policy's {self.network.n_tiers} tiers.")
        logits = self._logits(observation, k).astype(np.float64)
        weights = np.exp(logits - logits[k:].max())
        weights[:k] = 0.0
        return (weights / weights.sum()).tolist()

    def escalate_probability(self, observation: Observation, tier: int = 0) -> float:
        """π(a stronger tier | o, k): the sigmoid of ``escalation_log_odds``."""
        return 1.0 / (1.0 + math.exp(-self.escalation_log_odds(observation, tier)))

    def escalation_tier(self, observation: Observation, tier: int) -> int | None:
        """The stronger tier π finds most likely for an escalated step; None (the next one up) for a network
        without tier input, a tier it does not route from, or ``routing.escalate_to == "next"``."""
        k = self._routes(tier)
        if k is None or not self.network.tier_input or self.routing.escalate_to == "next":
            return None
        return k + 1 + int(np.argmax(self._logits(observation, k)[k + 1 :]))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``score`` over rows of network inputs."""
        with torch.no_grad():
            return self.network.escalate_log_odds(x)

    def save(self, directory: str | Path) -> Path:
        """Write the artifact in format 3, after checking that ``load`` will accept it.

        Raises:
            PolicyFileError: the artifact is invalid (e.g. tiers of another number than the network's,
                non-finite weights); nothing is written.
        """
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "policy", "kappa": self.kappa, "alpha": self.alpha,
            "n_tiers": self.network.n_tiers, "tiers": self.tiers, "feature_schema": self.schema.to_dict(),
            "normalization": {"mean": self.mean, "std": self.std, "ignored": self.ignored},
            "network": {"hidden": self.hidden, "layers": self.layers, "tier_input": self.network.tier_input},
            "training": self.training, "guarantee": self.guarantee,
            **({} if self.domain is None else {"domain": self.domain.model_dump()}),  # absent when off, as older readers expect
            **({} if self.routing.is_plain else {"routing": self.routing.model_dump()}),
        }
        return write_artifact(directory, "policy", self.network, manifest, Manifest,
                              diverged=" (training diverged; lower --delta or check the traces)")

    @classmethod
    def load(cls, directory: str | Path, expected_schema: FeatureSchema | None = None) -> PolicyArtifact:
        """Load and validate an artifact (an older format converted, see the module docstring).

        Raises:
            PolicyFileError: files missing, unreadable or corrupted, another format, a value out of
                its range (see ``Manifest``), weights of another shape or not finite, or a feature
                schema other than ``expected_schema`` (None: any schema ``stepgraph.features.SCHEMAS``
                knows). The message names the file and the field.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory, expected_schema)
        schema = FeatureSchema(**manifest.feature_schema.model_dump())
        shape, k = manifest.network, manifest.n_tiers
        network = PolicyNetwork(len(schema.names), shape.hidden, shape.layers, k, shape.tier_input)
        load_weights(network, directory, "policy", f"a {shape.layers}x{shape.hidden} policy network over {k} tiers")
        norm = manifest.normalization
        return cls(network, manifest.kappa, manifest.alpha, schema, list(norm.mean), list(norm.std), shape.hidden,
                   shape.layers, [t.model_dump() for t in manifest.tiers], manifest.training, list(norm.ignored or ()),
                   manifest.guarantee, manifest.domain, manifest.routing)


def load_policy(directory: str | Path, expected_schema: FeatureSchema | None = None) -> PolicyArtifact:
    """``PolicyArtifact.load``: one class reads every policy format (kept for its callers)."""
    return PolicyArtifact.load(directory, expected_schema)


class _TierPolicyArtifact:
    """The former K-tier class: builds a ``PolicyArtifact`` from its arguments, κ a probability of escalation."""

    def __new__(  # type: ignore[misc]
            cls, network: PolicyNetwork, kappa: float, alpha: float, schema: FeatureSchema, mean: list[float],
            std: list[float], tiers: list[dict[str, Any]], hidden: int = 64, layers: int = 3, ignored: Sequence[str] = (),
            training: dict[str, Any] | None = None, guarantee: dict[str, Any] | None = None) -> PolicyArtifact:
        return PolicyArtifact(network, kappa_from_probability(kappa), alpha, schema, list(mean), list(std), hidden, layers,
                              list(tiers), dict(training or {}), list(ignored), guarantee)

    load = PolicyArtifact.load


class _TierPolicyNetwork:
    """The former K-tier network: ``PolicyNetwork(n_features, hidden, layers, n_tiers, tier_input=True)``."""

    def __new__(cls, n_features: int, n_tiers: int, hidden: int = 64, layers: int = 3) -> PolicyNetwork:  # type: ignore[misc]
        return PolicyNetwork(n_features, hidden, layers, n_tiers, tier_input=True)


_DEPRECATED = {"TierPolicyArtifact": (_TierPolicyArtifact, "PolicyArtifact (κ on the log-odds scale)"),
               "TierPolicyNetwork": (_TierPolicyNetwork, "PolicyNetwork(n_features, hidden, layers, n_tiers, tier_input=True)"),
               "TIER_FORMAT": ("stepgraph.tier_policy", f"FORMAT ({FORMAT} v{FORMAT_VERSION} holds K tiers)")}


def __getattr__(name: str) -> Any:
    if name not in _DEPRECATED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value, instead = _DEPRECATED[name]
    warnings.warn(f"stepgraph.artifacts.policy.{name} is deprecated: use {instead}.", DeprecationWarning, stacklevel=2)
    return value
