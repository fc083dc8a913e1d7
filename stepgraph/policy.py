"""The routing policy π(escalate | o) and its artifact: safetensors weights + a JSON manifest.

An artifact is a directory holding ``policy.safetensors`` (the MLP) and ``policy.json``
(κ, α, the feature schema it was trained on, the feature normalisation, the model names and a
training summary, and the SHA-256 of the weights). It is never pickled. ``PolicyArtifact.load``
refuses a directory whose files are missing, corrupted, or of another feature schema.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stepgraph.errors import PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA, FeatureSchema, Observation

FORMAT = "stepgraph.policy"
FORMAT_VERSION = 1
WEIGHTS_FILE = "policy.safetensors"
MANIFEST_FILE = "policy.json"


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

    def normalise(self, rows: Sequence[Sequence[float]]) -> torch.Tensor:
        """Standardise feature rows; a missing (NaN) or ignored feature becomes its training mean (0)."""
        x = torch.tensor(rows, dtype=torch.float32)
        x = (x - torch.tensor(self.mean)) / torch.tensor(self.std)
        x[..., [self.schema.names.index(n) for n in self.ignored]] = 0.0
        return torch.nan_to_num(x, nan=0.0)

    @torch.no_grad()
    def escalate_probability(self, observation: Observation) -> float:
        """π(escalate | o) for one observation keyed by the schema's feature names."""
        return float(self.network.escalate_probability(self.normalise([self.schema.vector(observation)]))[0])

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous() for k, v in self.network.state_dict().items()}
        save_file(weights, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kappa": self.kappa,
            "alpha": self.alpha,
            "feature_schema": self.schema.to_dict(),
            "normalization": {"mean": self.mean, "std": self.std, "ignored": self.ignored},
            "network": {"hidden": self.hidden, "layers": self.layers},
            "models": self.models,
            "training": self.training,
            "weights_sha256": _sha256(directory / WEIGHTS_FILE),
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, expected_schema: FeatureSchema = CONFIDENCE_SCHEMA) -> PolicyArtifact:
        """Load and validate an artifact.

        Raises:
            PolicyFileError: files missing, unreadable or corrupted, another format version,
                or a feature schema other than ``expected_schema``.
        """
        directory = Path(directory)
        manifest_path, weights_path = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
        for path in (manifest_path, weights_path):
            if not path.is_file():
                raise PolicyFileError(f"{path} is missing: a policy directory holds {MANIFEST_FILE} and {WEIGHTS_FILE}.")
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
                raise PolicyFileError(
                    f"{manifest_path} is not a {FORMAT} v{FORMAT_VERSION} manifest "
                    f"(found {manifest.get('format')!r} v{manifest.get('format_version')!r})."
                )
            schema = FeatureSchema(**manifest["feature_schema"])
            mean, std = manifest["normalization"]["mean"], manifest["normalization"]["std"]
            # Manifests from before "ignored" existed marked a never-recorded feature as mean 0, std 1.
            unseen = [n for n, m, sd in zip(schema.names, mean, std) if (m, sd) == (0.0, 1.0)]
            ignored = list(manifest["normalization"].get("ignored", unseen))
            kappa, alpha = float(manifest["kappa"]), float(manifest["alpha"])
            hidden, layers = int(manifest["network"]["hidden"]), int(manifest["network"]["layers"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PolicyFileError(f"{manifest_path} is corrupted or incomplete: {exc}") from exc
        if schema != expected_schema:
            raise PolicyFileError(
                f"The policy in {directory} was trained on feature schema {schema}, but this graph computes "
                f"{expected_schema}. Retrain the policy (`stepgraph train`) on traces of this schema."
            )
        if len(mean) != len(schema.names) or len(std) != len(schema.names) or not all(math.isfinite(s) and s > 0 for s in std):
            raise PolicyFileError(f"{manifest_path}: the normalisation does not fit the {len(schema.names)} features.")
        if unknown := sorted(set(ignored) - set(schema.names)):
            raise PolicyFileError(f"{manifest_path}: ignored features {unknown} are not in the feature schema.")
        if manifest.get("weights_sha256") != _sha256(weights_path):
            raise PolicyFileError(f"{weights_path} does not match the checksum in {manifest_path}: the file is corrupted or was replaced.")
        network = PolicyNetwork(len(schema.names), hidden, layers)
        try:
            network.load_state_dict(load_file(str(weights_path)))
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise PolicyFileError(f"{weights_path} does not hold a {layers}x{hidden} policy network: {exc}") from exc
        network.eval()
        return cls(network, kappa, alpha, schema, list(mean), list(std), hidden, layers, manifest.get("models", {}),
                   manifest.get("training", {}), ignored)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
