"""RADAR: query-level routing by an item-response model over configurations.

A *configuration* is one of stepgraph's ways to answer a question: a tier alone, the stepwise
router at some κ, each with step/token budgets. A two-parameter logistic (2PL) item-response
model, fitted offline on a response matrix (``stepgraph.training.learning.radar``), gives each
configuration an ability θ_c and each training query a difficulty b_q and discrimination a_q:

    P(configuration c answers query q right) = sigmoid(a_q · (θ_c − b_q))

For an unseen query, b is predicted from the draft model's mean-pooled hidden states over the
question (``QueryEmbedder`` + ``DifficultyRegressor``) and a is the training queries' median. The
router sends the query to the cheapest configuration whose predicted probability clears a
threshold τ, calibrated on held-out queries for relative coverage ≥ 1 − α. Any missing or
non-finite input escalates to the most able configuration (the safe side).

The predicted difficulty also becomes the stepwise policy's optional ``difficulty`` feature
(``RouterContext.difficulty``): the probability that the cheapest configuration (the draft alone)
fails, ``1 − P(draft-alone right)``, a number in [0, 1].

The artifact is a directory: ``radar.json`` (a pydantic-checked manifest with the configurations,
their abilities and costs, τ, α, the tiers it was fitted on) and ``difficulty.safetensors`` (the
regressor). Nothing is pickled.

Example:
    >>> router = RadarRouter.from_path("runs/radar")  # doctest: +SKIP
    >>> route = router.route("Ann has 3 coins. She gets 2 more. How many coins does she have?")  # doctest: +SKIP
    >>> route.configuration.name, route.context().difficulty  # doctest: +SKIP
    >>> tiers, gate = route.configuration.graph_parts(load_pair(), PolicyGate.from_path(DEFAULT_POLICY_DIR))  # doctest: +SKIP
    >>> build_graph(tiers, gate).invoke({"question": question}, context=route.context())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stepgraph.artifacts.manifest import KINDS, check_checksum, load_weights, read_manifest, validate, write_artifact
from stepgraph.artifacts.tiers import check_tiers, describe
from stepgraph.context import RouterContext
from stepgraph.errors import ConfigError, PolicyFileError

MANIFEST_FILE, WEIGHTS_FILE = KINDS["radar"].manifest_file, KINDS["radar"].weights_file
GateName = Literal["draft", "target", "tier", "policy", "threshold"]


def p_correct(theta: float | torch.Tensor, a: float | torch.Tensor, b: float | torch.Tensor) -> Any:
    """The 2PL probability sigmoid(a · (θ − b)) (floats or tensors)."""
    if isinstance(theta, torch.Tensor) or isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.sigmoid(torch.as_tensor(a) * (torch.as_tensor(theta) - torch.as_tensor(b)))
    z = a * (theta - b)
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


class Configuration(BaseModel):
    """One way to answer a question: a gate over the tiers with step and token budgets."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    """Unique name, e.g. ``draft`` or ``policy@k0.3``."""
    gate: GateName
    """``draft``/``target``: the router's cheapest/strongest tier alone; ``tier``: the model named ``tier`` alone
    (one outside the router's pair, e.g. the testbed's mid model); ``policy``/``threshold``: the stepwise router."""
    tier: str | None = Field(default=None, min_length=1)
    """For ``gate="tier"``: the name of the model it runs alone (e.g. ``mid``)."""
    tier_parameters: int | None = Field(default=None, ge=1)
    """For ``gate="tier"``: that model's parameter count when its answers were collected (checked when it runs)."""
    kappa: float | None = Field(default=None, allow_inf_nan=False)
    """The policy's κ, on the log-odds scale of every policy artifact (None: the artifact's own calibrated κ)."""
    threshold: float | None = Field(default=None, ge=0, le=1)
    """The confidence threshold of a ``threshold`` gate."""
    max_steps: int = Field(default=16, ge=1)
    """Step budget of the run."""
    max_step_tokens: int = Field(default=64, ge=1)
    """Token budget of one step."""
    ability: float | None = Field(default=None, allow_inf_nan=False)
    """θ_c of the fitted 2PL model (None until fitted)."""
    mean_flops: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Mean generated FLOPs per query on the training split: the cost it is ordered by."""
    mean_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Mean dollars per query on the training split."""

    @model_validator(mode="after")
    def _tier_named_iff_tier_gate(self) -> Self:
        if (self.gate == "tier") != (self.tier is not None):
            raise ValueError(f"configuration {self.name!r}: tier names the model of gate 'tier' and only of it "
                             f"(gate {self.gate!r}, tier {self.tier!r})")
        return self

    @property
    def stepwise(self) -> bool:
        return self.gate in ("policy", "threshold")

    def graph_parts(self, tiers: Sequence[Any], policy: Any = None) -> tuple[list[Any], Any]:
        """The tiers and gate that run this configuration (``build_graph(*config.graph_parts(tiers, policy))``).

        A tier alone is that tier twice, never escalated; ``policy`` (a ``PolicyGate``) is needed for
        ``gate="policy"``, its κ replaced when ``kappa`` is set. ``tiers`` may be the 2-tier pair or the
        K tiers cheapest first (``load_tiers(3)``): ``draft``/``target`` are the first and last, a
        ``tier`` configuration finds its model by name, and the stepwise router (a 2-tier gate) runs
        on the first and last.

        Raises:
            ConfigError: a ``tier`` configuration whose model is not among ``tiers``, or ``policy`` missing.
            PolicyFileError: that model has another parameter count than the one its answers were collected on.
        """
        from stepgraph.routing.gates import AlwaysDraftGate, ConfidenceThresholdGate, PolicyGate

        if self.gate == "draft":
            return [tiers[0], tiers[0]], AlwaysDraftGate()
        if self.gate == "target":
            return [tiers[-1], tiers[-1]], AlwaysDraftGate()
        if self.gate == "tier":
            model = next((t for t in tiers if getattr(t, "name", None) == self.tier), None)
            if model is None:
                raise ConfigError(f"Configuration {self.name!r} runs the model {self.tier!r} alone, which is not among the tiers "
                                  f"{[getattr(t, 'name', t) for t in tiers]}: pass tiers that include it "
                                  "(stepgraph.testbed.load_tiers(3) for the testbed's mid model).")
            size = getattr(model, "n_params", None)
            if self.tier_parameters is not None and size is not None and size != self.tier_parameters:
                raise PolicyFileError(f"Configuration {self.name!r}'s ability was estimated on {self.tier!r} with "
                                      f"{self.tier_parameters} parameters; this {self.tier!r} has {size}.")
            return [model, model], AlwaysDraftGate()
        pair = [tiers[0], tiers[-1]]
        if self.gate == "threshold":
            return pair, ConfidenceThresholdGate(0.9 if self.threshold is None else self.threshold)
        if not isinstance(policy, PolicyGate):
            raise ConfigError(f"Configuration {self.name!r} runs the stepwise policy: pass policy= (a PolicyGate).")
        if self.kappa is None:
            return pair, policy
        import dataclasses

        return pair, PolicyGate(dataclasses.replace(policy.artifact, kappa=self.kappa))

    def context(self, base: RouterContext | None = None, difficulty: float | None = None) -> RouterContext:
        """The run settings of this configuration over ``base`` (seed, temperature...), with ``difficulty``."""
        settings = {**vars(base or RouterContext()), "max_steps": self.max_steps, "max_step_tokens": self.max_step_tokens}
        return RouterContext(**{**settings, "difficulty": difficulty})


class RadarManifest(BaseModel):
    """``radar.json``: everything but the regressor's weights."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["stepgraph.radar"] = "stepgraph.radar"
    format_version: Literal[1] = 1
    kind: Literal["radar"] = "radar"
    """the artifact kind (``stepgraph.artifacts.KINDS``); absent in manifests written before it was recorded"""
    configurations: list[Configuration] = Field(min_length=1)
    """Every configuration with its ability and cost."""
    pool: list[str] = Field(min_length=1)
    """The configurations the router chooses among (names), cheapest first."""
    discrimination: float = Field(gt=0, allow_inf_nan=False)
    """a used for unseen queries: the training queries' median discrimination."""
    threshold: float = Field(ge=0, le=1.000001, allow_inf_nan=False)
    """τ: the cheapest pool configuration with P(right) ≥ τ is chosen (above 1: always the fallback)."""
    alpha: float = Field(gt=0, lt=1)
    """Allowed miss rate the threshold was calibrated for."""
    embedding_tier: int = Field(ge=0)
    """Which tier's hidden states embed the question."""
    embedding_dim: int = Field(ge=1)
    """Width of the embedding (the tier's hidden size)."""
    regressor_hidden: int = Field(ge=1)
    """Hidden width of the difficulty regressor."""
    tiers: list[dict[str, Any]] = Field(default_factory=list)
    """Name and parameters of the tiers the response matrix was collected on."""
    guarantee: dict[str, Any] = Field(default_factory=dict)
    """The calibration's verdict (``training.guarantee.calibration_guarantee``)."""
    training: dict[str, Any] = Field(default_factory=dict)
    """Data sizes, held-out error of the regressor, fit diagnostics."""

    @model_validator(mode="after")
    def _pool_is_known_and_fitted(self) -> Self:
        names = [c.name for c in self.configurations]
        if len(set(names)) != len(names):
            raise ValueError(f"configuration names repeat: {names}")
        for name in self.pool:
            if name not in names:
                raise ValueError(f"pool names {name!r}, which is not among the configurations {names}")
            config = self.configurations[names.index(name)]
            if config.ability is None or config.mean_flops is None:
                raise ValueError(f"pool configuration {name!r} has no fitted ability or cost")
        if self.tiers and self.embedding_tier >= len(self.tiers):
            raise ValueError(f"embedding_tier {self.embedding_tier} is not one of the {len(self.tiers)} tiers "
                             f"(0 to {len(self.tiers) - 1})")
        return self


class DifficultyRegressor(torch.nn.Module):
    """Embedding → predicted 2PL difficulty b: standardise, one hidden layer, linear out."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)


class QueryEmbedder:
    """The mean of a tier's last hidden states over the question's chat prompt.

    Works with ``TransformersStepModel`` tiers (the fast Qwen2 path or any transformers causal LM).
    """

    def __init__(self, model: Any) -> None:
        if not hasattr(model, "model") or not hasattr(model, "tokenizer") or not hasattr(model, "prompt"):
            raise PolicyFileError(f"{getattr(model, 'name', model)!r} is not a local transformers tier: RADAR embeds the "
                                  "question with a local model's hidden states (TransformersStepModel).")
        self.step_model = model

    @property
    def dim(self) -> int:
        inner = self.step_model.model
        return int(inner.config.hidden if hasattr(inner.config, "hidden") else inner.config.hidden_size)

    @torch.inference_mode()
    def __call__(self, question: str) -> torch.Tensor:
        model = self.step_model
        ids = model.tokenizer.encode(model.prompt(question, []), add_special_tokens=False)
        with model._lock:
            hidden = hidden_states(model.model, ids)
        return hidden.mean(dim=0).float()


def hidden_states(model: Any, ids: Sequence[int]) -> torch.Tensor:
    """Last-layer hidden states ``[len(ids), hidden]`` of a ``qwen2.Qwen2`` or a wrapped transformers model."""
    if hasattr(model, "hidden_states"):
        return model.hidden_states(ids)
    out = model.module(input_ids=torch.tensor([list(ids)]), output_hidden_states=True)
    return out.hidden_states[-1][0]


@dataclass(frozen=True)
class Route:
    """Where RADAR sends one query, and why."""

    configuration: Configuration
    difficulty: float | None
    """Predicted 2PL difficulty b (None: not available, the route is the fallback)."""
    probabilities: dict[str, float]
    """Predicted P(right) of each pool configuration."""
    fallback: bool
    """True when an input was missing or non-finite and the route escalated to the most able configuration."""
    difficulty_feature: float | None
    """The policy's ``difficulty`` feature: 1 − P(cheapest configuration right), in [0, 1]."""

    def context(self, base: RouterContext | None = None) -> RouterContext:
        return self.configuration.context(base, self.difficulty_feature)


class RadarRouter:
    """Choose a configuration per query from the predicted difficulty (see the module docstring)."""

    def __init__(self, manifest: RadarManifest, regressor: DifficultyRegressor | None = None,
                 embedder: QueryEmbedder | None = None) -> None:
        self.manifest, self.regressor, self.embedder = manifest, regressor, embedder
        by_name = {c.name: c for c in manifest.configurations}
        self.pool = sorted((by_name[n] for n in manifest.pool), key=lambda c: c.mean_flops or 0.0)
        self.strongest = max(self.pool, key=lambda c: (c.ability or 0.0, c.mean_flops or 0.0))

    def probabilities(self, difficulty: float) -> dict[str, float]:
        a = self.manifest.discrimination
        return {c.name: p_correct(float(c.ability), a, difficulty) for c in self.pool}  # type: ignore[arg-type]

    def choose(self, difficulty: float | None, threshold: float | None = None) -> Route:
        """The cheapest pool configuration with P(right) ≥ τ; the most able one if none is, or b is missing/non-finite."""
        tau = self.manifest.threshold if threshold is None else threshold
        if difficulty is None or not math.isfinite(difficulty) or not math.isfinite(tau):
            return Route(self.strongest, None, {}, True, None)
        probabilities = self.probabilities(difficulty)
        if any(not math.isfinite(p) for p in probabilities.values()):
            return Route(self.strongest, None, {}, True, None)
        feature = min(1.0, max(0.0, 1.0 - probabilities[self.pool[0].name]))
        for config in self.pool:
            if probabilities[config.name] >= tau:
                return Route(config, difficulty, probabilities, False, feature)
        return Route(self.strongest, difficulty, probabilities, False, feature)

    def predict_difficulty(self, question: str) -> float | None:
        """b̂ of a question; None without an embedder/regressor or when the embedding is not finite."""
        if self.regressor is None or self.embedder is None:
            return None
        embedding = self.embedder(question)
        if embedding.numel() != self.manifest.embedding_dim or not torch.isfinite(embedding).all():
            return None
        with torch.inference_mode():
            value = float(self.regressor(embedding[None])[0])
        return value if math.isfinite(value) else None

    def route(self, question: str) -> Route:
        return self.choose(self.predict_difficulty(question))

    # --- artifact ---------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``radar.json`` (with the regressor's SHA-256) and ``difficulty.safetensors`` through the shared writer."""
        if self.regressor is None:
            raise PolicyFileError(f"Refusing to write a RADAR router into {directory} without its difficulty regressor.")
        return write_artifact(directory, "radar", self.regressor, self.manifest.model_dump(mode="json"), _StoredManifest)

    @classmethod
    def from_path(cls, directory: str | Path, tiers: Sequence[Any] | None = None, allow_other_tiers: bool = False) -> RadarRouter:
        """Load an artifact; with ``tiers``, check they are the ones it was fitted on and embed with them.

        ``tiers`` may be the K tiers cheapest first (``load_tiers(3)``, which a ``tier`` configuration such as
        ``mid`` needs to run) for a router fitted on a pair: the first and last are checked as the pair.

        Raises:
            PolicyFileError: a missing, corrupted or other-format file, weights that do not match the manifest's
                checksum, an ``embedding_tier`` outside the tiers, or other tiers (see ``check_tiers``).
        """
        directory = Path(directory)
        raw, checksum = read_manifest(directory, "radar")
        stored = validate(_StoredManifest, raw, directory, "radar")
        if stored.weights_sha256 is not None:  # format 1 artifacts written before the checksum have none
            check_checksum(directory, "radar", stored.weights_sha256, checksum)
        manifest = RadarManifest.model_validate(stored.model_dump(exclude={"weights_sha256"}))
        regressor = DifficultyRegressor(manifest.embedding_dim, manifest.regressor_hidden)
        load_weights(regressor, directory, "radar", f"a difficulty regressor of width {manifest.embedding_dim}")
        embedder = None
        if tiers is not None:
            if len(manifest.tiers) == 2 and len(tiers) > 2:  # K tiers (load_tiers(3)): the router's pair is the ends
                tiers = [tiers[0], tiers[-1]]
            check_tiers(manifest.tiers, describe(tiers), str(directory), allow_other_tiers)
            if manifest.embedding_tier >= len(tiers):
                raise PolicyFileError(f"{directory / MANIFEST_FILE}: embedding_tier {manifest.embedding_tier} is not one of the "
                                      f"{len(tiers)} tiers (0 to {len(tiers) - 1}); fit the router again on these tiers.")
            embedder = QueryEmbedder(tiers[manifest.embedding_tier])
        return cls(manifest, regressor, embedder)


class _StoredManifest(RadarManifest):
    """``radar.json`` as written: the manifest and the regressor's SHA-256."""

    weights_sha256: str | None = None
