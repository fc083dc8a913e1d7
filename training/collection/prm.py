"""A small process reward model for the testbed's RSD baseline, trained on recorded step verdicts.

It predicts P(draft step is correct) from the draft's features (the confidence schema), fitted
by logistic loss on the exact verifier's verdicts in the trace store. Real deployments pass a
served PRM (e.g. Skywork-PRM on vLLM) to ``ProcessRewardGate`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from stepgraph.training.data.records import Episode

from stepgraph.routing.gates.reward_model import RewardModel


class StepRewardModel(RewardModel):
    """The runtime's reward model (``stepgraph.routing.gates.reward_model``), fitted here; ``load`` returns this class."""

    def fit(self, episodes: Sequence[Episode], epochs: int = 300, lr: float = 1e-2, seed: int = 0) -> StepRewardModel:
        steps = [s for e in episodes for s in e.steps if s.draft_correct is not None]
        if not steps:
            raise ValueError("No step with a verdict to train the reward model on; collect traces first.")
        torch.manual_seed(seed)
        for layer in self.net:  # the weights were drawn at construction, from whatever the global stream held then
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
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
