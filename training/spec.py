"""The run spec: one TOML file describing tiers, data, verifier, gate and sampling for every stage.

Every stage of the CLI reads it (``stepgraph collect|train|calibrate|evaluate|bench|solve
--config run.toml``), so a user with their own models and data writes the pipeline once::

    [[tiers]]                          # cheapest first
    kind = "server"                    # transformers | vllm | server | openai
    base_url = "http://127.0.0.1:8000/v1"
    model = "qwen-1.5b"
    n_params = 1_540_000_000

    [data]
    source = "gsm8k"                   # testbed | gsm8k | math500 | omnimath | jsonl
    path = "gsm8k_test.jsonl"
    splits = { train = 0.6, calibration = 0.2, test = 0.2 }

    [verifier]
    kind = "rollout"                   # testbed | judge | rollout

Errors name the file and the field (``run.toml: tiers.1.base_url: Field required``). API keys are
read from the environment variable a tier names, never from the file, and never logged.

The runtime half (tiers, gate, sampling, prices) is ``stepgraph.runspec``, which serving reads;
this module adds the training tables and re-exports the runtime's names.

Example:
    >>> spec = load_spec("examples/testbed.toml")  # doctest: +SKIP
    >>> tiers = spec.build_tiers(); gate = spec.build_gate(tiers)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, model_validator
from stepgraph.training.collection.verifiers import StepVerifier
from stepgraph.training.data.records import Item
from stepgraph.training.data.splits import SPLITS, split_items
from stepgraph.training.data.store import store_location

from stepgraph.errors import ConfigError
from stepgraph.models.base import StepModel
from stepgraph.runspec import (
    DEFAULT_SYSTEM_PROMPT,
    TRAINING_TABLES,
    GatePathsSpec,
    GateSpec,
    OpenAITier,
    PriceSpec,
    RuntimeSpec,
    SamplingSpec,
    ServerTier,
    ThresholdFeatureSpec,
    TierSpec,
    TransformersTier,
    VLLMTier,
    _Strict,
    chat_model,
    read_spec,
)

# This module's names and the runtime's it re-exports (importable from here as before).
__all__ = ["DEFAULT_SYSTEM_PROMPT", "TRAINING_TABLES", "CollectSpec", "DataSpec", "GateSpec", "OpenAITier", "PathsSpec", "PriceSpec",
           "RunSpec", "SamplingSpec", "ServerTier", "TierSpec", "TransformersTier", "VLLMTier", "VerifierSpec", "chat_model",
           "load_spec"]


DEFAULT_SPLITS: dict[str, float] = {"train": 400, "calibration": 100, "test": 200}


class DataSpec(_Strict):
    """Where the questions come from and how they are split."""

    source: Literal["testbed", "gsm8k", "math500", "omnimath", "jsonl"] = "testbed"
    """the testbed generator, a published data set file, or a generic JSONL"""
    path: Path | None = None
    """the data file (.jsonl / .json / .parquet); not for the testbed"""
    question_field: str = "question"
    """for source = jsonl: the field holding the question"""
    answer_field: str = "answer"
    """for source = jsonl: the field holding the reference final answer"""
    splits: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SPLITS))
    """sizes (integers) or fractions of the file (all < 1) of train / calibration / test"""
    seed: int = 0
    """salt of the split hash (and the testbed generator's seed)"""
    skip_bad_rows: bool = False
    """skip rows without a question or answer, malformed or with a repeated id (counted on stderr) instead of refusing the file"""

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.source != "testbed" and self.path is None:
            raise ValueError(f"source = {self.source!r} needs path = the data file")
        if unknown := sorted(set(self.splits) - set(SPLITS)):
            raise ValueError(f"splits: unknown split(s) {unknown}; use {list(SPLITS)}")
        if any(v < 0 for v in self.splits.values()):
            raise ValueError("splits: sizes and fractions must be ≥ 0")
        fractions = [v for v in self.splits.values() if 0 < v < 1]
        if fractions and (len(fractions) != len([v for v in self.splits.values() if v]) or sum(fractions) > 1 + 1e-9):
            raise ValueError("splits: give either all sizes (integers) or all fractions summing to at most 1")
        return self


class VerifierSpec(_Strict):
    """The per-step verdict V that training needs (never used when routing)."""

    kind: Literal["testbed", "judge", "rollout"] = "testbed"
    """testbed: the exact checker (testbed data only); judge: an LLM judge; rollout: Math-Shepherd completions"""
    judge: TierSpec | None = None
    """for kind = judge: the chat model that judges (a server or openai tier)"""
    k: int = Field(default=4, ge=1)
    """for kind = rollout: completions per step"""
    m: int = Field(default=1, ge=1)
    """for kind = rollout: completions that must reach the reference for the step to count as correct"""
    max_steps: int = Field(default=16, ge=1)
    """for kind = rollout: step limit of each completion"""

    @model_validator(mode="after")
    def _check(self) -> VerifierSpec:
        if self.m > self.k:
            raise ValueError(f"m = {self.m} cannot exceed k = {self.k}")
        if self.kind == "judge" and (self.judge is None or self.judge.kind not in ("server", "openai")):
            raise ValueError("kind = 'judge' needs [verifier.judge] with kind = 'server' or 'openai'")
        return self


class CollectSpec(ThresholdFeatureSpec):
    """The behaviour gate: escalate below a confidence threshold, with ε-exploration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = 0.9
    """behaviour gate's confidence threshold"""
    epsilon: float = Field(default=0.3, ge=0, le=1)
    """behaviour gate's exploration rate"""


class PathsSpec(GatePathsSpec):
    """Where each stage reads and writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Annotated[Path | str, BeforeValidator(store_location)] = Path("runs/traces.sqlite")
    """the trace store: a SQLite file, or a postgresql:// URL shared by collectors on several machines"""
    bench: Path = Path("runs/bench")
    """where bench writes its table, CSV/JSON and plot"""


class RunSpec(RuntimeSpec):
    """A whole run: the runtime's tiers, gate and sampling, and training's data, verifier, α, collection and paths."""

    data: DataSpec = Field(default_factory=DataSpec)
    """the questions and their train / calibration / test split (default: the testbed)"""
    verifier: VerifierSpec = Field(default_factory=VerifierSpec)
    """the per-step verdict collection records for training"""
    alpha: float = Field(default=0.02, gt=0, lt=1)
    """allowed miss rate: relative coverage ≥ 1 − α"""
    collect: CollectSpec = Field(default_factory=CollectSpec)
    """the exploring behaviour gate of collection"""
    paths: PathsSpec = Field(default_factory=PathsSpec)
    """where the stages read and write (relative to the working directory)"""

    @model_validator(mode="after")
    def _check(self) -> RunSpec:
        if self.verifier.kind == "testbed" and self.data.source != "testbed":
            raise ValueError("verifier.kind = 'testbed' checks testbed problems only; use 'rollout' or 'judge' for other data")
        return self

    def items(self, split: str) -> list[Item]:
        """The data split's items, deterministic by a hash of each question (testbed: its own split)."""
        if split not in SPLITS:
            raise ConfigError(f"Unknown split {split!r}; choose one of {list(SPLITS)}.")
        size = self.data.splits.get(split, 0)
        if self.data.source == "testbed":
            from stepgraph.training.collection.collect import testbed_items

            if not size == int(size):
                raise ConfigError(f"{self._where('data.splits')}: the testbed takes sizes (integers), not fractions.")
            return testbed_items(split, int(size), seed=self.data.seed)  # type: ignore[arg-type]
        return split_items(self._all_items(), self.data.splits, seed=self.data.seed)[split]

    def _all_items(self) -> list[Item]:
        from stepgraph.training.data.datasets import load_dataset_file, load_jsonl

        assert self.data.path is not None
        if not self.data.path.is_file():
            raise ConfigError(f"{self._where('data.path')}: {self.data.path} does not exist.")
        if self.data.source == "jsonl":
            return load_jsonl(self.data.path, self.data.question_field, self.data.answer_field, self.data.skip_bad_rows)
        return load_dataset_file(self.data.source, self.data.path, self.data.skip_bad_rows)

    def build_verifier(self, tiers: Sequence[StepModel]) -> StepVerifier:
        """The step verifier for training; the rollout verifier uses the strongest of ``tiers``."""
        from stepgraph.training.collection.verifiers import JudgeVerifier, RolloutVerifier, TestbedVerifier

        v = self.verifier
        if v.kind == "testbed":
            from stepgraph.testbed import testbed_task

            problems = [p for split in SPLITS for p in testbed_task().generate(split, int(self.data.splits.get(split, 0)), seed=self.data.seed)]
            return TestbedVerifier(problems)
        if v.kind == "judge":
            assert isinstance(v.judge, ServerTier | OpenAITier)
            return JudgeVerifier(chat_model(v.judge, temperature=0.0, max_retries=3))  # a verdict, not a sample
        s = self.sampling
        return RolloutVerifier(tiers[-1], k=v.k, m=v.m, max_steps=v.max_steps, temperature=s.temperature,
                               max_step_tokens=s.max_step_tokens, seed=s.seed)


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a run spec (TOML), its runtime and training tables.

    Raises:
        ConfigError: the file is missing, not TOML, or a field is missing or out of range; the
            message names the file and every bad field.
    """
    return read_spec(path, RunSpec)
