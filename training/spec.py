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

Example:
    >>> spec = load_spec("examples/testbed.toml")  # doctest: +SKIP
    >>> tiers = spec.build_tiers(); gate = spec.build_gate(tiers)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from stepgraph.training.collect import Item
from stepgraph.training.splits import SPLITS, split_items
from stepgraph.training.store import store_location
from stepgraph.training.verifiers import StepVerifier

from stepgraph.context import RouterContext
from stepgraph.costs import Prices
from stepgraph.errors import ConfigError
from stepgraph.gates.base import Gate
from stepgraph.models.base import DEFAULT_TEMPERATURE, StepModel

DEFAULT_SYSTEM_PROMPT = None  # the shipped testbed models were trained without one


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceSpec(_Strict):
    """API prices in US dollars per one million tokens (default: GPT-4.1-mini's)."""

    input: float = Field(default=0.40, ge=0)
    """uncached prompt tokens"""
    cached_input: float = Field(default=0.10, ge=0)
    """prompt tokens served from a prompt cache"""
    output: float = Field(default=1.60, ge=0)
    """generated tokens"""


class _TierBase(_Strict):
    name: str | None = None
    """name in traces, costs and artifacts (default: the model's own)"""
    n_params: int | None = Field(default=None, gt=0)
    """parameter count for FLOPs (2·N per generated token); counted from the weights where they are local"""
    prices: PriceSpec = Field(default_factory=PriceSpec)
    """per-million-token prices of this tier"""
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    """an optional system turn (the paper's: "Please reason step by step, and put your final answer within \\boxed{}.")"""


class TransformersTier(_TierBase):
    """A Hugging Face model directory run in-process by transformers."""

    kind: Literal["transformers"]
    path: Path
    """the model directory (config.json, tokenizer, *.safetensors)"""

    def features(self) -> list[str]:
        return ["logit_confidence", "api_confidence"]

    def build(self) -> StepModel:
        from stepgraph.models.local import TransformersStepModel

        model = TransformersStepModel(self.path, name=self.name, system_prompt=self.system_prompt)
        if self.n_params is not None:  # e.g. to count FLOPs of the full model behind a pruned copy
            model.n_params = self.n_params
        return model


class VLLMTier(_TierBase):
    """A vLLM offline engine in this process (needs the ``vllm`` extra)."""

    kind: Literal["vllm"]
    model: str
    """a model directory or a hub id in the local cache"""
    engine_kwargs: dict[str, Any] = {}
    """keyword arguments of ``vllm.LLM`` (dtype, max_model_len, gpu_memory_utilization, ...)"""
    logprobs_mode: Literal["raw_logits", "raw_logprobs", "processed_logprobs", "processed_logits"] = "raw_logits"
    """what the engine reports per token: raw logits give STEER's score, log-probabilities the API confidence"""

    def features(self) -> list[str]:
        return ["logit_confidence"] if self.logprobs_mode.endswith("logits") else ["api_confidence"]

    def build(self) -> StepModel:
        from stepgraph.models.vllm_engine import VLLMStepModel

        kwargs = {"logprobs_mode": self.logprobs_mode, **self.engine_kwargs}
        return VLLMStepModel(self.model, name=self.name, n_params=self.n_params, system_prompt=self.system_prompt,
                             engine_kwargs=kwargs)


def _api_key(env: str | None, where: str) -> str:
    if env is None:
        return "EMPTY"  # a local vLLM server takes any key
    key = os.environ.get(env)
    if not key:
        raise ConfigError(f"{where}: api_key_env names {env}, which is not set in the environment.")
    return key


class ServerTier(_TierBase):
    """An OpenAI-compatible server (vLLM's ``vllm serve``, SGLang, ...), through ``ChatOpenAI``."""

    kind: Literal["server"]
    base_url: str
    """the server's OpenAI-compatible base URL, ending in /v1"""
    model: str
    """the served model name (``--served-model-name``)"""
    continue_final_message: bool = True
    """the server continues a partial assistant message (vLLM does), so prompts match a local model's"""
    logprobs_are_logits: bool = False
    """the server reports raw logits as logprobs (vLLM ``--logprobs-mode raw_logits``)"""
    api_key_env: str | None = None
    """environment variable holding the key, if the server wants one"""
    timeout: float = Field(default=60.0, gt=0)
    """seconds per request"""

    def features(self) -> list[str]:
        return ["logit_confidence"] if self.logprobs_are_logits else ["api_confidence"]

    def build(self) -> StepModel:
        return _chat_tier(self, base_url=self.base_url, continue_final_message=self.continue_final_message,
                          logprobs_are_logits=self.logprobs_are_logits)


class OpenAITier(_TierBase):
    """The OpenAI API (or any provider with its client): log-probabilities, no raw logits."""

    kind: Literal["openai"]
    model: str
    """the API model name, e.g. gpt-4.1-mini"""
    api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the API key (the key itself never goes in the file)"""
    timeout: float = Field(default=60.0, gt=0)
    """seconds per request"""

    @model_validator(mode="after")
    def _needs_params(self) -> OpenAITier:
        if self.n_params is None:
            raise ValueError("n_params is required for an API model (an estimate, used for FLOPs only)")
        return self

    def features(self) -> list[str]:
        return ["api_confidence"]

    def build(self) -> StepModel:
        return _chat_tier(self, base_url=None, continue_final_message=False, logprobs_are_logits=False)


def chat_model(tier: ServerTier | OpenAITier, **options: Any) -> Any:
    """A ``ChatOpenAI`` for a served or API tier; the key comes from the environment variable the tier names."""
    from langchain_openai import ChatOpenAI

    base_url = tier.base_url if isinstance(tier, ServerTier) else None
    return ChatOpenAI(model=tier.model, base_url=base_url, api_key=_api_key(tier.api_key_env, f"tier {tier.model}"),  # type: ignore[arg-type]
                      timeout=tier.timeout, **options)


def _chat_tier(tier: ServerTier | OpenAITier, *, base_url: str | None, continue_final_message: bool,
               logprobs_are_logits: bool) -> StepModel:
    from stepgraph.models.chat import ChatStepModel

    if tier.n_params is None:
        raise ConfigError(f"tier {tier.name or tier.model}: n_params is required for a served model (it cannot be counted here).")
    # ChatStepModel retries transient errors itself
    chat = chat_model(tier, logprobs=True, top_logprobs=5, max_retries=0)
    return ChatStepModel(chat, n_params=tier.n_params, name=tier.name or tier.model, continue_final_message=continue_final_message,
                         system_prompt=tier.system_prompt, logprobs_are_logits=logprobs_are_logits)


TierSpec = Annotated[TransformersTier | VLLMTier | ServerTier | OpenAITier, Field(discriminator="kind")]


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
    splits: dict[str, float] = {"train": 400, "calibration": 100, "test": 200}
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


class GateSpec(_Strict):
    """The gate for solve / evaluate, and the one calibrate sets the threshold of."""

    name: Literal["policy", "threshold", "steer", "prm", "random", "draft", "target"] = "policy"
    """a gate registry name"""
    path: Path | None = None
    """policy: the artifact directory; steer: the fitted JSON; any: a calibrated gate directory (default: paths.gate)"""
    threshold: float | None = None
    """threshold / steer: the uncalibrated threshold"""
    rate: float | None = None
    """random: the escalation rate"""
    allow_other_tiers: bool = False
    """load an artifact trained on other tiers (with a warning) instead of refusing"""


class SamplingSpec(_Strict):
    """Sampling and limits of every routed run."""

    temperature: float = Field(default=DEFAULT_TEMPERATURE, ge=0)
    """sampling temperature of every call (the paper's value)"""
    seed: int = 0
    """base seed; every run's and call's seed derives from it"""
    max_steps: int = Field(default=16, ge=1)
    """steps per answer"""
    max_step_tokens: int = Field(default=64, ge=1)
    """tokens per step"""
    budget_flops: float | None = Field(default=None, gt=0)
    """FLOPs budget per answer (none: no budget)"""


class CollectSpec(_Strict):
    """The behaviour gate: escalate below a confidence threshold, with ε-exploration."""

    threshold: float = 0.9
    """behaviour gate's confidence threshold"""
    feature: Literal["api_confidence", "logit_confidence"] = "api_confidence"
    """behaviour gate's confidence feature (pick one your draft tier reports)"""
    epsilon: float = Field(default=0.3, ge=0, le=1)
    """behaviour gate's exploration rate"""


class PathsSpec(_Strict):
    """Where each stage reads and writes."""

    store: Annotated[Path | str, BeforeValidator(store_location)] = Path("runs/traces.sqlite")
    """the trace store: a SQLite file, or a postgresql:// URL shared by collectors on several machines"""
    policy: Path = Path("runs/policy")
    """where train writes the policy artifact"""
    gate: Path = Path("runs/gate")
    """where calibrate writes the calibrated gate"""
    bench: Path = Path("runs/bench")
    """where bench writes its table, CSV/JSON and plot"""


class RunSpec(_Strict):
    """A whole run: tiers (cheapest first), data, verifier, gate, α, sampling, collection and paths."""

    tiers: list[TierSpec] = Field(min_length=2)
    """the models, cheapest first"""
    data: DataSpec = Field(default_factory=DataSpec)
    """the questions and their train / calibration / test split (default: the testbed)"""
    verifier: VerifierSpec = Field(default_factory=VerifierSpec)
    """the per-step verdict collection records for training"""
    gate: GateSpec = Field(default_factory=GateSpec)
    """the gate solve / evaluate / bench route with, and the one calibrate sets"""
    alpha: float = Field(default=0.02, gt=0, lt=1)
    """allowed miss rate: relative coverage ≥ 1 − α"""
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    """temperature, seed, limits and budget of every run"""
    collect: CollectSpec = Field(default_factory=CollectSpec)
    """the exploring behaviour gate of collection"""
    paths: PathsSpec = Field(default_factory=PathsSpec)
    """where the stages read and write (relative to the working directory)"""
    source: Path | None = None
    """the file this spec was read from (set by load_spec)"""

    @model_validator(mode="after")
    def _check(self) -> RunSpec:
        if self.verifier.kind == "testbed" and self.data.source != "testbed":
            raise ValueError("verifier.kind = 'testbed' checks testbed problems only; use 'rollout' or 'judge' for other data")
        return self

    # --- builders -------------------------------------------------------------------------------

    def build_tiers(self) -> list[StepModel]:
        """The StepModels, cheapest first (local weights load here)."""
        return [tier.build() for tier in self.tiers]

    def prices(self) -> list[Prices]:
        return [Prices(t.prices.input, t.prices.cached_input, t.prices.output) for t in self.tiers]

    def context(self) -> RouterContext:
        s = self.sampling
        return RouterContext(max_steps=s.max_steps, budget_flops=s.budget_flops, temperature=s.temperature, seed=s.seed,
                             max_step_tokens=s.max_step_tokens)

    def items(self, split: str) -> list[Item]:
        """The data split's items, deterministic by a hash of each question (testbed: its own split)."""
        if split not in SPLITS:
            raise ConfigError(f"Unknown split {split!r}; choose one of {list(SPLITS)}.")
        size = self.data.splits.get(split, 0)
        if self.data.source == "testbed":
            from stepgraph.training.collect import testbed_items

            if not size == int(size):
                raise ConfigError(f"{self._where('data.splits')}: the testbed takes sizes (integers), not fractions.")
            return testbed_items(split, int(size), seed=self.data.seed)  # type: ignore[arg-type]
        return split_items(self._all_items(), self.data.splits, seed=self.data.seed)[split]

    def _all_items(self) -> list[Item]:
        from stepgraph.training.datasets import load_dataset_file, load_jsonl

        assert self.data.path is not None
        if not self.data.path.is_file():
            raise ConfigError(f"{self._where('data.path')}: {self.data.path} does not exist.")
        if self.data.source == "jsonl":
            return load_jsonl(self.data.path, self.data.question_field, self.data.answer_field, self.data.skip_bad_rows)
        return load_dataset_file(self.data.source, self.data.path, self.data.skip_bad_rows)

    def build_verifier(self, tiers: Sequence[StepModel]) -> StepVerifier:
        """The step verifier for training; the rollout verifier uses the strongest of ``tiers``."""
        from stepgraph.training.verifiers import JudgeVerifier, RolloutVerifier, TestbedVerifier

        v = self.verifier
        if v.kind == "testbed":
            from stepgraph.testbed import task

            problems = [p for split in SPLITS for p in task.generate(split, int(self.data.splits.get(split, 0)), seed=self.data.seed)]
            return TestbedVerifier(problems)
        if v.kind == "judge":
            assert isinstance(v.judge, ServerTier | OpenAITier)
            return JudgeVerifier(chat_model(v.judge, temperature=0.0, max_retries=3))  # a verdict, not a sample
        s = self.sampling
        return RolloutVerifier(tiers[-1], k=v.k, m=v.m, max_steps=v.max_steps, temperature=s.temperature,
                               max_step_tokens=s.max_step_tokens, seed=s.seed)

    def describe_tiers(self, tiers: Sequence[StepModel] | None = None) -> list[dict[str, Any]]:
        """What an artifact records about the tiers: name, parameters, backend kind, features reported."""
        out = []
        for i, tier in enumerate(self.tiers):
            model = tiers[i] if tiers is not None else None
            out.append({"name": model.name if model else tier.name or _default_name(tier),
                        "parameters": model.n_params if model else tier.n_params,
                        "backend": tier.kind, "features": tier.features()})
        return out

    def build_gate(self, tiers: Sequence[StepModel] | None = None) -> Gate:
        """The spec's gate; a calibrated gate directory (``paths.gate``) or policy is checked against the tiers."""
        from stepgraph.training.calibrate import load_gate

        return load_gate(self, tiers)

    def _where(self, field: str) -> str:
        return f"{self.source or 'run spec'}: {field}"


def _default_name(tier: Any) -> str:
    return str(getattr(tier, "model", None) or Path(str(getattr(tier, "path", ""))).name)


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a run spec (TOML).

    Raises:
        ConfigError: the file is missing, not TOML, or a field is missing or out of range; the
            message names the file and every bad field.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such run spec file.")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM at the start is harmless
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); a run spec is a TOML text file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return RunSpec.model_validate({**raw, "source": path})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
