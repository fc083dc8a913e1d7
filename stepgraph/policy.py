"""The routing policy π(escalate | o) and its artifact: safetensors weights + a JSON manifest.

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

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import numpy as np
import torch
from pydantic import BaseModel, Field, Strict, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stepgraph.errors import PolicyFileError
from stepgraph.features import FeatureSchema, Observation, known_schema

FORMAT = "stepgraph.policy"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SCALES = ("probability", "log_odds")
WEIGHTS_FILE = "policy.safetensors"
MANIFEST_FILE = "policy.json"

FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]


class _FeatureSchemaModel(BaseModel):
    name: str
    version: int
    names: list[str] = Field(min_length=1)


class _Normalization(BaseModel):
    mean: list[FiniteFloat]
    std: list[Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]]
    ignored: list[str] | None = None
    """absent in manifests written before ignored features existed"""

    def check_fits(self, schema: _FeatureSchemaModel) -> None:
        """Raise ValueError unless there is one mean and std per feature and every ignored feature is in the schema."""
        n = len(schema.names)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"normalization.mean and .std must each hold one value per feature ({n}), got "
                             f"{len(self.mean)} and {len(self.std)}")
        if unknown := sorted(set(self.ignored or ()) - set(schema.names)):
            raise ValueError(f"normalization.ignored features {unknown} are not in the feature schema")


class _Network(BaseModel):
    hidden: Annotated[int, Strict(), Field(ge=1, le=4096)]
    layers: Annotated[int, Strict(), Field(ge=1, le=16)]


class Manifest(BaseModel):
    """The schema of ``policy.json``: types and ranges a policy needs to route safely."""

    format: Literal["stepgraph.policy"]
    format_version: Literal[1, 2]
    scale: Literal["probability", "log_odds"] = "probability"
    """what κ thresholds: π(escalate | o), or its log-odds (format 1 manifests: always the probability)"""
    kappa: Annotated[float, Strict(), Field(allow_inf_nan=False)]
    """the threshold: in [0, 1] on the probability scale, any finite number on the log-odds scale"""
    alpha: Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)]
    """the allowed miss rate, in (0, 1)"""
    feature_schema: _FeatureSchemaModel
    normalization: _Normalization
    network: _Network
    models: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    guarantee: dict[str, Any] | None = None
    """the coverage the artifact may claim (``{"type": "split-conformal" | "none", ...}``); None before it was recorded"""
    weights_sha256: str

    @model_validator(mode="after")
    def _fits_the_schema(self) -> Self:
        if self.format_version == 1 and self.scale != "probability":
            raise ValueError("scale: format_version 1 manifests hold a probability κ; write scale "
                             f"{self.scale!r} with format_version 2")
        if self.scale == "probability" and not 0 <= self.kappa <= 1:
            raise ValueError(f"kappa: a probability κ must be in [0, 1] (found {self.kappa!r})")
        self.normalization.check_fits(self.feature_schema)
        return self


def _validation_message(exc: ValidationError) -> str:
    """One line per problem: the field's path, what is wrong, and the value found."""
    problems = []
    for error in exc.errors():
        if not error["loc"]:  # a check across fields: its message says it all
            problems.append(error["msg"].removeprefix("Value error, "))
            continue
        found = repr(error.get("input"))
        found = found if len(found) <= 60 else found[:57] + "..."
        problems.append(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']} (found {found})")
    return "; ".join(problems)


def _check_feature_schema(stored: Any, expected: FeatureSchema | None, directory: Path) -> None:
    """Refuse another feature schema first: it explains normalisation lists of another length too."""
    try:
        schema = FeatureSchema(**_FeatureSchemaModel.model_validate(stored).model_dump())
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


def _non_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, tensor in weights.items() if not bool(torch.isfinite(tensor).all())]


class PolicyNetwork(torch.nn.Module):
    """An MLP from normalised features to the logits of (accept, escalate).

    Args:
        n_features: input width.
        hidden: units per hidden layer (paper: 64).
        layers: number of linear layers (paper: 3, i.e. two hidden layers).
    """

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 3) -> None:
        super().__init__()
        widths = [n_features] + [hidden] * (layers - 1) + [2]
        modules: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            modules.append(torch.nn.Linear(a, b))
            if i < len(widths) - 2:
                modules.append(torch.nn.Tanh())
        self.net = torch.nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def escalate_probability(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=-1)[..., 1]

    def escalate_log_odds(self, x: torch.Tensor) -> torch.Tensor:
        """log π(escalate | o) − log π(accept | o): the logit difference, finite where the probability saturates."""
        logits = self.forward(x)
        return logits[..., 1] - logits[..., 0]


@dataclass
class PolicyArtifact:
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

    @torch.no_grad()
    def escalate_probability(self, observation: Observation) -> float:
        """π(escalate | o) for one observation keyed by the schema's feature names."""
        return float(self.network.escalate_probability(self.normalise([self.schema.vector(observation)]))[0])

    def score(self, observation: Observation) -> float:
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
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scale": self.scale,
            "kappa": self.kappa,
            "alpha": self.alpha,
            "feature_schema": self.schema.to_dict(),
            "normalization": {"mean": self.mean, "std": self.std, "ignored": self.ignored},
            "network": {"hidden": self.hidden, "layers": self.layers},
            "models": self.models,
            "training": self.training,
            "guarantee": self.guarantee,
            "weights_sha256": "",
        }
        return write_artifact(Path(directory), self.network, manifest, Manifest, "a policy", WEIGHTS_FILE, MANIFEST_FILE, FORMAT,
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
        manifest_path, weights_path = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
        raw, checksum = read_manifest(directory, WEIGHTS_FILE, MANIFEST_FILE, "policy")
        if isinstance(raw, dict):
            if raw.get("format") != FORMAT or raw.get("format_version") not in READABLE_VERSIONS:
                raise PolicyFileError(
                    f"{manifest_path} is not a {FORMAT} manifest of version {' or '.join(map(str, READABLE_VERSIONS))} "
                    f"(found {raw.get('format')!r} v{raw.get('format_version')!r})."
                )
            _check_feature_schema(raw.get("feature_schema"), expected_schema, directory)
        try:
            manifest = Manifest.model_validate(raw)
        except ValidationError as exc:
            raise PolicyFileError(f"{manifest_path} is invalid: {_validation_message(exc)}") from exc
        schema = FeatureSchema(**manifest.feature_schema.model_dump())
        mean, std = manifest.normalization.mean, manifest.normalization.std
        ignored = manifest.normalization.ignored
        if ignored is None:  # manifests from before "ignored" marked a never-recorded feature as mean 0, std 1
            ignored = [n for n, m, sd in zip(schema.names, mean, std) if (m, sd) == (0.0, 1.0)]
        if manifest.weights_sha256 != checksum:
            raise PolicyFileError(f"{weights_path} does not match the checksum in {manifest_path}: the file is corrupted or was replaced.")
        hidden, layers = manifest.network.hidden, manifest.network.layers
        network = PolicyNetwork(len(schema.names), hidden, layers)
        load_weights(network, weights_path, f"a {layers}x{hidden} policy network", "retrain the policy")
        return cls(network, manifest.kappa, manifest.alpha, schema, list(mean), list(std), hidden, layers, manifest.models,
                   manifest.training, list(ignored), manifest.guarantee, manifest.scale, manifest.format_version)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(directory: Path, weights_file: str, manifest_file: str, kind: str) -> tuple[Any, str]:
    """The raw JSON manifest of an artifact directory and its weights' SHA-256.

    Raises:
        PolicyFileError: a file is missing, unreadable (permissions) or the manifest is not JSON; ``kind``
            ("policy", "allocator") names the artifact in the message.
    """
    manifest_path, weights_path = directory / manifest_file, directory / weights_file
    for path in (manifest_path, weights_path):
        if not path.is_file():
            raise PolicyFileError(f"{path} is missing: {'an' if kind[0] in 'aeiou' else 'a'} {kind} directory holds "
                                  f"{manifest_file} and {weights_file}.")
    try:
        return json.loads(manifest_path.read_text()), _sha256(weights_path)
    except OSError as exc:
        raise PolicyFileError(f"Cannot read the {kind} file {exc.filename or manifest_path}: {exc.strerror or exc}. "
                              "Check its permissions.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{manifest_path} is corrupted or incomplete: {exc}") from exc


def load_weights(network: torch.nn.Module, weights_path: Path, shape: str, retrain: str) -> None:
    """Load safetensors weights into ``network`` (then in eval mode), refusing weights of another shape or not finite.

    Raises:
        PolicyFileError: ``shape`` says what the file should hold, ``retrain`` what to do about non-finite weights.
    """
    try:
        weights = load_file(str(weights_path))
        network.load_state_dict(weights)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise PolicyFileError(f"{weights_path} does not hold {shape}: {exc}") from exc
    if bad := _non_finite(weights):
        raise PolicyFileError(f"{weights_path}: weights {bad} are not finite (NaN or inf); {retrain}.")
    network.eval()


def write_artifact(directory: Path, network: torch.nn.Module, manifest: dict[str, Any], schema: type[BaseModel], what: str,
                   weights_file: str, manifest_file: str, fmt: str, diverged: str = "") -> Path:
    """Write a network's weights (safetensors) and their manifest (JSON, with the weights' SHA-256) into ``directory``,
    after checking that the manifest passes ``schema`` and the weights are finite (else nothing is written).

    Raises:
        PolicyFileError: "Refusing to write {what} ...", naming the fields or weights at fault (``diverged``
            is added to the non-finite weights' message).
    """
    try:
        schema.model_validate(manifest)
    except ValidationError as exc:
        raise PolicyFileError(f"Refusing to write {what} that would not load into {directory}: {_validation_message(exc)}") from exc
    weights = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    if bad := _non_finite(weights):
        raise PolicyFileError(f"Refusing to write {what} into {directory}: weights {bad} are not finite{diverged}.")
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / weights_file), metadata={"format": fmt})
    manifest["weights_sha256"] = _sha256(directory / weights_file)
    (directory / manifest_file).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory
