"""One reader and one writer for every learned artifact: a JSON manifest + checksummed safetensors, never a pickle.

``KINDS`` is the table of artifact kinds (policy, allocator, RADAR) and their files. Every failure
is one ``PolicyFileError`` line naming the file and what to fix. The pydantic pieces the manifests
share (feature schema, normalisation, network shape, tiers) live here too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, Field, Strict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stepgraph.errors import PolicyFileError


@dataclass(frozen=True)
class Kind:
    """One kind of artifact: its files and what to do about bad weights."""

    manifest_file: str
    weights_file: str
    what: str
    """the artifact in a sentence ("a policy")"""
    retrain: str
    """what to do when its weights are unusable"""


KINDS = {
    "policy": Kind("policy.json", "policy.safetensors", "a policy", "retrain the policy (`stepgraph train`)"),
    "allocator": Kind("allocator.json", "allocator.safetensors", "an allocator", "train the allocator again"),
    "radar": Kind("radar.json", "difficulty.safetensors", "a RADAR router", "fit the router again (`stepgraph radar fit`)"),
}

FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]


class FeatureSchemaModel(BaseModel):
    name: str
    version: int
    names: list[str] = Field(min_length=1)


class Normalization(BaseModel):
    mean: list[FiniteFloat]
    std: list[PositiveFloat]
    ignored: list[str] | None = None
    """absent in manifests written before ignored features existed"""

    def check_fits(self, schema: FeatureSchemaModel) -> None:
        """Raise ValueError unless there is one mean and std per feature, every ignored feature is in
        the schema, and at least one feature is used (else the score is a constant that never escalates)."""
        n = len(schema.names)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"normalization.mean and .std must each hold one value per feature ({n}), got "
                             f"{len(self.mean)} and {len(self.std)}")
        if unknown := sorted(set(self.ignored or ()) - set(schema.names)):
            raise ValueError(f"normalization.ignored features {unknown} are not in the feature schema")
        if set(self.ignored or ()) >= set(schema.names):
            raise ValueError("normalization.ignored lists every feature, so the score would be a constant; "
                             "train on traces that record at least one feature")


class Network(BaseModel):
    hidden: Annotated[int, Strict(), Field(ge=1, le=4096)]
    layers: Annotated[int, Strict(), Field(ge=1, le=16)]


class Tier(BaseModel):
    name: str
    parameters: Annotated[int, Field(ge=0)] | None = None


def validation_message(exc: ValidationError) -> str:
    """One line for all problems: each field's path, what is wrong, and the value found."""
    problems = []
    for error in exc.errors():
        if not error["loc"]:  # a check across fields: its message says it all
            problems.append(error["msg"].removeprefix("Value error, "))
            continue
        found = repr(error.get("input"))
        found = found if len(found) <= 60 else found[:57] + "..."
        problems.append(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']} (found {found})")
    return "; ".join(problems)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(directory: str | Path, kind: str, need_weights: bool = True) -> tuple[Any, str | None]:
    """The raw JSON manifest of an artifact directory of ``kind`` and its weights' SHA-256.

    Raises:
        PolicyFileError: a file is missing or unreadable (permissions), or the manifest is not UTF-8,
            not JSON, nested past the parser's recursion limit, or of another ``kind`` (manifests written
            before ``kind`` existed hold none and pass).
    """
    spec, directory = KINDS[kind], Path(directory)
    manifest_path, weights_path = directory / spec.manifest_file, directory / spec.weights_file
    for path in (manifest_path, weights_path) if need_weights else (manifest_path,):
        if not path.is_file():
            raise PolicyFileError(f"{path} is missing: {spec.what} directory holds {spec.manifest_file} and "
                                  f"{spec.weights_file}.")
    try:
        text = manifest_path.read_text(encoding="utf-8")
        checksum = _sha256(weights_path) if weights_path.is_file() else None
    except OSError as exc:
        raise PolicyFileError(f"Cannot read {exc.filename or manifest_path}: {exc.strerror or exc}. Check its permissions.") from exc
    except UnicodeDecodeError as exc:
        raise PolicyFileError(f"{manifest_path} is not UTF-8 text ({exc.reason} at byte {exc.start}): the file is "
                              f"corrupted; {spec.retrain}.") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyFileError(f"{manifest_path} is corrupted or incomplete: {exc}") from exc
    except RecursionError as exc:  # no manifest nests deeply: not one, or corrupted
        raise PolicyFileError(f"{manifest_path} nests JSON too deeply for a manifest: the file is corrupted; "
                              f"{spec.retrain}.") from exc
    found = raw.get("kind", kind) if isinstance(raw, dict) else kind
    if found != kind:
        raise PolicyFileError(f"{manifest_path} holds {KINDS[found].what if isinstance(found, str) and found in KINDS else repr(found)} (kind "
                              f"{found!r}), not {spec.what}: load it with that artifact's loader.")
    return raw, checksum


def check_checksum(directory: str | Path, kind: str, recorded: str, actual: str | None) -> None:
    """Refuse weights whose SHA-256 is not the one the manifest records."""
    if recorded != actual:
        spec = KINDS[kind]
        raise PolicyFileError(f"{Path(directory) / spec.weights_file} does not match the checksum in "
                              f"{Path(directory) / spec.manifest_file}: the file is corrupted or was replaced.")


def _non_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, tensor in weights.items() if not bool(torch.isfinite(tensor).all())]


def load_weights(network: torch.nn.Module, directory: str | Path, kind: str, shape: str) -> None:
    """Load an artifact's safetensors weights into ``network`` (then in eval mode).

    Raises:
        PolicyFileError: weights of another shape than ``shape`` says, unreadable, or not finite.
    """
    spec = KINDS[kind]
    weights_path = Path(directory) / spec.weights_file
    try:
        weights = load_file(str(weights_path))
        network.load_state_dict(weights)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise PolicyFileError(f"{weights_path} does not hold {shape}: {exc}") from exc
    if bad := _non_finite(weights):
        raise PolicyFileError(f"{weights_path}: weights {bad} are not finite (NaN or inf); {spec.retrain}.")
    network.eval()


def validate(schema: type[BaseModel], raw: Any, directory: str | Path, kind: str) -> Any:
    """``schema.model_validate(raw)``, a failure as one line naming the manifest and its fields."""
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        path = Path(directory) / KINDS[kind].manifest_file
        raise PolicyFileError(f"{path} is invalid: {validation_message(exc)}") from exc


def write_artifact(directory: str | Path, kind: str, network: torch.nn.Module, manifest: dict[str, Any],
                   schema: type[BaseModel], diverged: str = "", what: str | None = None) -> Path:
    """Write a network's weights (safetensors) and their manifest (JSON, with ``kind`` and the weights' SHA-256),
    after checking that the manifest passes ``schema`` and the weights are finite (else nothing is written).

    Raises:
        PolicyFileError: "Refusing to write {what} ...", naming the fields or weights at fault (``diverged``
            is added to the non-finite weights' message; ``what`` names the artifact, by default its kind's).
    """
    spec, directory = KINDS[kind], Path(directory)
    what, manifest = what or spec.what, {**manifest, "kind": kind}
    try:
        schema.model_validate({**manifest, "weights_sha256": ""})
    except ValidationError as exc:
        raise PolicyFileError(f"Refusing to write {what} that would not load into {directory}: "
                              f"{validation_message(exc)}") from exc
    weights = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    if bad := _non_finite(weights):
        raise PolicyFileError(f"Refusing to write {what} into {directory}: weights {bad} are not finite{diverged}.")
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / spec.weights_file), metadata={"format": str(manifest.get("format", kind))})
    manifest = {**manifest, "weights_sha256": _sha256(directory / spec.weights_file)}
    (directory / spec.manifest_file).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory
