"""The run spec's runtime half: tiers, gate, sampling and prices — what serving and solving read.

``stepgraph serve --config`` and ``stepgraph solve --config`` load a run spec here; the training
stages read the same file through ``stepgraph.training.spec``, which adds and checks the training
tables (data, verifier, α, collection, the store). This module never imports training: a run spec
with training tables loads here unchanged, those tables are left to training to check.

Errors name the file and the field (``run.toml: tiers.1.base_url: Field required``). API keys are
read from the environment variable a tier names, never from the file, and never logged.

Example:
    >>> spec = load_runtime_spec("examples/testbed.toml")  # doctest: +SKIP
    >>> tiers = spec.build_tiers(); gate = spec.build_gate(tiers)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stepgraph.context import RouterContext
from stepgraph.errors import ConfigError
from stepgraph.models.base import DEFAULT_TEMPERATURE, StepModel
from stepgraph.models.costs import Prices
from stepgraph.routing.gates import AlwaysDraftGate, AlwaysTargetGate, ConfidenceThresholdGate, RandomGate
from stepgraph.routing.gates.base import Gate
from stepgraph.routing.gates.calibrated import GATE_FILE, load_gate_artifact

DEFAULT_SYSTEM_PROMPT = None  # the shipped testbed models were trained without one

TRAINING_TABLES = ("data", "verifier", "alpha")
"""Top-level tables only training reads; the runtime loader leaves them to ``stepgraph.training.spec`` to check."""


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


class _TrainingFields(BaseModel):
    """A table the runtime reads a few fields of; the training spec checks the rest (and forbids unknown ones)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class GatePathsSpec(_TrainingFields):
    """Where the calibrated gate and the policy are (``[paths]``; its store and bench are training's)."""

    policy: Path = Path("runs/policy")
    """where train writes the policy artifact"""
    gate: Path = Path("runs/gate")
    """where calibrate writes the calibrated gate"""


class ThresholdFeatureSpec(_TrainingFields):
    """``[collect]``'s confidence feature, which an uncalibrated threshold gate also reads (the rest is training's)."""

    feature: Literal["api_confidence", "logit_confidence"] = "api_confidence"
    """behaviour gate's confidence feature (pick one your draft tier reports)"""


class RuntimeSpec(_Strict):
    """What routing needs of a run spec: tiers (cheapest first), gate, sampling and the gate's paths."""

    tiers: list[TierSpec] = Field(min_length=2)
    """the models, cheapest first"""
    gate: GateSpec = Field(default_factory=GateSpec)
    """the gate solve / evaluate / bench route with, and the one calibrate sets"""
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    """temperature, seed, limits and budget of every run"""
    collect: ThresholdFeatureSpec = Field(default_factory=ThresholdFeatureSpec)
    """the confidence feature of an uncalibrated threshold gate"""
    paths: GatePathsSpec = Field(default_factory=GatePathsSpec)
    """where the calibrated gate and the policy are (relative to the working directory)"""
    source: Path | None = None
    """the file this spec was read from (set by the loader)"""

    def build_tiers(self) -> list[StepModel]:
        """The StepModels, cheapest first (local weights load here)."""
        return [tier.build() for tier in self.tiers]

    def prices(self) -> list[Prices]:
        return [Prices(t.prices.input, t.prices.cached_input, t.prices.output) for t in self.tiers]

    def context(self) -> RouterContext:
        s = self.sampling
        return RouterContext(max_steps=s.max_steps, budget_flops=s.budget_flops, temperature=s.temperature, seed=s.seed,
                             max_step_tokens=s.max_step_tokens)

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
        """Fixed gates by name; calibrated ones from gate.path, paths.gate or paths.policy, checked against the tiers."""
        g = self.gate
        if g.name == "draft":
            return AlwaysDraftGate()
        if g.name == "target":
            return AlwaysTargetGate()
        if g.name == "random":
            return RandomGate(0.5 if g.rate is None else g.rate, seed=self.sampling.seed)
        if g.path is not None:
            return load_gate_artifact(g.path, tiers, g.allow_other_tiers)
        if (self.paths.gate / GATE_FILE).is_file():
            return load_gate_artifact(self.paths.gate, tiers, g.allow_other_tiers)
        if g.name == "policy":
            return load_gate_artifact(self.paths.policy, tiers, g.allow_other_tiers)
        if g.name == "threshold" and g.threshold is not None:
            return ConfidenceThresholdGate(g.threshold, self.collect.feature)
        raise ConfigError(f"{self.source or 'run spec'}: gate {g.name!r} has no calibrated artifact at {self.paths.gate}; "
                          f"run `stepgraph calibrate --config {self.source or 'SPEC'} --gate {g.name}` (or set gate.path / gate.threshold).")

    def _where(self, field: str) -> str:
        return f"{self.source or 'run spec'}: {field}"


def _default_name(tier: Any) -> str:
    return str(getattr(tier, "model", None) or Path(str(getattr(tier, "path", ""))).name)



Spec = TypeVar("Spec", bound=BaseModel)


def read_spec(path: str | Path, model: type[Spec], *, leave: Sequence[str] = ()) -> Spec:
    """Read the TOML file at ``path`` and validate it as ``model``, without the top-level tables in ``leave``.

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
        return model.model_validate({**{k: v for k, v in raw.items() if k not in leave}, "source": path})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


def load_runtime_spec(path: str | Path) -> RuntimeSpec:
    """The run spec at ``path`` for serving or solving; its training tables are not read (training checks them)."""
    return read_spec(path, RuntimeSpec, leave=TRAINING_TABLES)
