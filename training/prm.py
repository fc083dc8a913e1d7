"""A small process reward model for the testbed's RSD baseline, trained on recorded step verdicts.

It predicts P(draft step is correct) from the draft's features (the confidence schema), fitted
by logistic loss on the exact verifier's verdicts in the trace store. Real deployments pass a
served PRM (e.g. Skywork-PRM on vLLM) to ``ProcessRewardGate`` instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from stepgraph.training.records import Episode

from stepgraph.errors import PolicyFileError
from stepgraph.features import CONFIDENCE_SCHEMA, FeatureSchema, Observation
from stepgraph.gates.base import GateInput


class StepRewardModel:
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

    def fit(self, episodes: Sequence[Episode], epochs: int = 300, lr: float = 1e-2, seed: int = 0) -> StepRewardModel:
        steps = [s for e in episodes for s in e.steps if s.draft_correct is not None]
        if not steps:
            raise ValueError("No step with a verdict to train the reward model on; collect traces first.")
        torch.manual_seed(seed)
        raw = torch.tensor([self.schema.vector(s.observation) for s in steps], dtype=torch.float32)
        finite = torch.where(torch.isnan(raw), torch.zeros_like(raw), raw)
        counts = (~torch.isnan(raw)).sum(0).clamp_min(1)
        self.mean = finite.sum(0) / counts
        self.std = torch.sqrt((torch.where(torch.isnan(raw), self.mean, raw) - self.mean).pow(2).sum(0) / counts).clamp_min(1e-6)
        x, y = self._x([s.observation for s in steps]), torch.tensor([float(s.draft_correct is True) for s in steps])
        optimiser = torch.optim.Adam(self.net.parameters(), lr=lr)
        for _ in range(epochs):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(x).squeeze(1), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return self

    def save(self, path: Path) -> None:
        """Weights and normalisation as safetensors (never pickle); the schema and width in its metadata."""
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()} | {"mean": self.mean, "std": self.std}
        save_file(tensors, str(path), metadata={"schema": json.dumps(self.schema.to_dict()), "hidden": str(self.hidden)})

    @classmethod
    def load(cls, path: Path) -> StepRewardModel:
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
