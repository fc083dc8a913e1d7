"""Model backends behind the StepModel interface."""

from stepgraph.models.base import StepModel, StepOutput

__all__ = ["StepModel", "StepOutput"]
