"""Local transformers backend: any Hugging Face causal LM directory, full logits, on CPU.

This is the code path a user points at a real Qwen2.5-Math checkpoint, and the one the shipped
testbed models run on by default.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as hf_logging

from stepgraph.errors import ContextLimitError, ModelLoadError
from stepgraph.models.base import STEP_SEPARATOR, StepOutput, continuation_prompt, split_step


class TransformersStepModel:
    """Generate one reasoning step at a time with a local transformers model.

    The prompt is the model's chat template with the question as the user turn, continued by
    the accepted steps. The keys/values of the longest prompt prefix seen on the previous call
    are reused, so a step appended to the trajectory is not prefilled again; the reuse is
    reported in ``StepOutput.cached_tokens``.

    Args:
        path: a directory with config, safetensors weights and tokenizer.
        name: the model's name in traces and costs (default: the directory name).
        system_prompt: an optional system turn (Qwen2.5-Math expects "Please reason step by
            step, and put your final answer within \\boxed{}.").
        top_k: how many log-probabilities to report per token.
        dtype: torch dtype of the weights on CPU.

    Example:
        >>> from stepgraph.testbed import DRAFT_MODEL_DIR
        >>> model = TransformersStepModel(DRAFT_MODEL_DIR)
        >>> out = model.generate_step("Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?", [], seed=0)
        >>> out.generated_tokens == len(out.tokens)
        True
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        system_prompt: str | None = None,
        top_k: int = 5,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json).")
        hf_logging.disable_progress_bar()  # a weight-loading bar per model drowns the CLI's output
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Could not load the model in {path}: {exc}") from exc
        self.name = name or path.name
        self.path = path
        self.system_prompt = system_prompt
        self.top_k = top_k
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._eos_ids = {i for i in _as_list(self.model.config.eos_token_id) + [self.tokenizer.eos_token_id] if i is not None}
        self._lock = threading.Lock()  # one generation at a time: the prefix cache is shared state
        self._cache: DynamicCache | None = None
        self._cache_ids: list[int] = []

    def prompt(self, question: str, steps: Sequence[str]) -> str:
        """The text the model continues: chat prompt, then the accepted steps and a blank line."""
        return continuation_prompt(self.tokenizer, question, steps, self.system_prompt)

    @torch.inference_mode()
    def generate_step(
        self,
        question: str,
        steps: Sequence[str],
        *,
        temperature: float = 0.7,
        seed: int | None = None,
        max_tokens: int = 64,
    ) -> StepOutput:
        prompt_ids = self.tokenizer(self.prompt(question, steps), add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + 1 > self.max_length:
            raise ContextLimitError(
                f"The prompt has {len(prompt_ids)} tokens; {self.name} handles at most {self.max_length}."
            )
        max_tokens = min(max_tokens, self.max_length - len(prompt_ids))
        generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
        with self._lock:
            cache, cached = self._reuse_cache(prompt_ids)
            logits = self._forward(prompt_ids[cached:], cache)
            ids: list[int] = []
            max_logits: list[float] = []
            top: list[list[tuple[str, float]]] = []
            text = ""
            finished = False
            while len(ids) < max_tokens:
                logprobs = torch.log_softmax(logits, dim=-1)
                max_logits.append(float(logits.max()))
                values, indices = logprobs.topk(self.top_k)
                top.append([(self._token_text(int(i)), float(v)) for v, i in zip(values, indices)])
                token = _sample(logits, temperature, generator)
                ids.append(token)
                if token in self._eos_ids:
                    finished = True
                    break
                text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
                if STEP_SEPARATOR in text or len(ids) == max_tokens:
                    break
                logits = self._forward([token], cache)
            self._cache, self._cache_ids = cache, prompt_ids + ids[:-1]
        step, _ = split_step(text)
        return StepOutput(
            text=step,
            tokens=[self._token_text(i) for i in ids],
            max_logits=max_logits,
            top_logprobs=top,
            prompt_tokens=len(prompt_ids),
            cached_tokens=cached,
            generated_tokens=len(ids),
            finished=finished,
            model=self.name,
        )

    @torch.inference_mode()
    def step_logprobs(self, question: str, steps: Sequence[str], step: str) -> list[float]:
        """Log-probabilities this model gives to the tokens of ``step`` (with its step break) after ``steps``.

        SpecReason-style judging reads how likely the strong model finds a drafted step.
        """
        prefix = self.tokenizer(self.prompt(question, steps), add_special_tokens=False)["input_ids"]
        ids = self.tokenizer(self.prompt(question, [*steps, step]), add_special_tokens=False)["input_ids"]
        if ids[: len(prefix)] != prefix or len(ids) == len(prefix):
            raise ValueError("The step does not extend the prompt token-wise; cannot score it.")
        logits = self.model(input_ids=torch.tensor([ids])).logits[0, len(prefix) - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[len(prefix) :])[:, None])
        return [float(v) for v in logprobs.squeeze(1)]

    def _token_text(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))

    def _reuse_cache(self, prompt_ids: list[int]) -> tuple[DynamicCache, int]:
        common = 0
        for a, b in zip(self._cache_ids, prompt_ids):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt_ids) - 1)  # at least one token must be fed for logits
        cache, self._cache, self._cache_ids = self._cache, None, []  # stale if this call fails
        if cache is None or common == 0:
            return DynamicCache(config=self.model.config), 0
        cache.crop(common - cache.get_seq_length())  # a negative count removes that many tokens
        return cache, common

    def _forward(self, ids: list[int], cache: DynamicCache) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
        return out.logits[0, -1].float()


def _sample(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _as_list(value: int | list[int] | None) -> list[int | None]:
    return list(value) if isinstance(value, list) else [value]
