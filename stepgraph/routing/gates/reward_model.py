"""A small process reward model: an MLP from a draft step's confidence features to P(step is correct).

The runtime half (load, score) that a calibrated ``prm`` gate needs; ``stepgraph.training.collection.prm``
fits it on recorded step verdicts. Real deployments pass a served PRM (e.g. Skywork-PRM on vLLM)
to ``ProcessRewardGate`` instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import torch

from stepgraph.errors import PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA, FeatureSchema, Observation
from stepgraph.routing.gates.base import GateInput


class RewardModel:
    """An MLP from normalised features to the probability that a draft step is correct."""

    def __init__(self, schema: FeatureSchema = CONFIDENCE_SCHEMA, hidden: int = 32) -> None:
        n = len(schema.names)
        self.schema, self.hidden = schema, hidden
        self.net = torch.nn.Sequential(torch.nn.Linear(n, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        self.mean = torch.zeros(n)
        self.std = torch.ones(n)

    def _x(self, observations: Sequence[Observation]) -> torch.Tensor:
        x = torch.tensor([self.schema.vector(o) for o in observations], dtype=torch.float32)
        return torch.nan_to_num((x - self.mean) / self.std, nan=0.0)

    def save(self, path: Path) -> None:
        """Weights and normalisation as safetensors (never pickle); the schema and width in its metadata."""
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()} | {"mean": self.mean, "std": self.std}
        save_file(tensors, str(path), metadata={"schema": json.dumps(self.schema.to_dict()), "hidden": str(self.hidden)})

    @classmethod
    def load(cls, path: Path) -> Self:
        """A reward model written by ``save``; PolicyFileError names the file when it is unreadable or foreign."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
            schema = json.loads(meta["schema"])
            if schema != CONFIDENCE_SCHEMA.to_dict():
                raise PolicyFileError(f"{path} was trained on feature schema {schema}, not {CONFIDENCE_SCHEMA.to_dict()}.")
            model = cls(CONFIDENCE_SCHEMA, hidden=int(meta["hidden"]))
            model.net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")})
            model.mean, model.std = tensors["mean"], tensors["std"]
        except PolicyFileError:
            raise
        except Exception as exc:  # a missing, truncated or foreign file: say which
            raise PolicyFileError(f"{path} is not a stepgraph reward model ({type(exc).__name__}: {exc}).") from exc
        return model

    @torch.no_grad()
    def __call__(self, x: GateInput) -> float:
        return float(torch.sigmoid(self.net(self._x([x.observation]))[0, 0]))
