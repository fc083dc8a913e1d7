"""Local backend: any Hugging Face causal LM directory, full logits, on CPU.

This is the code path a user points at a real Qwen2.5-Math checkpoint, and the one the shipped
testbed models run on by default. Plain Qwen2 checkpoints run on ``stepgraph.models.qwen2``
(no transformers import, seconds faster to start); every other directory on transformers.
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from stepgraph.errors import ConfigError, ContextLimitError, ModelLoadError, ModelOutputError
from stepgraph.models import qwen2
from stepgraph.models.base import (
    DEFAULT_TEMPERATURE,
    STEP_SEPARATOR,
    QuestionScore,
    StepOutput,
    continuation_prompt,
    question_span,
    split_step,
)

# Rendered through each model's chat template and tokenizer at load, so a broken template or
# tokenizer fails there, naming its file, instead of inside a run.
PROBE_QUESTION = "Ann has 3 coins. She gets 2 more. How many coins does she have? 0 1 2 3 4 5 6 7 8 9 + - * / ="
PROBE_STEP = "3+2=5"
# Files a transformers tokenizer can be built from; without any of them AutoTokenizer silently
# builds a 2-token tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


class TransformersStepModel:
    """Generate one reasoning step at a time with a local transformers model.

    The prompt is the model's chat template with the question as the user turn, continued by
    the accepted steps. The keys/values of recent prompts are kept (a least-recently-used set of
    ``cache_slots`` sequences) and the longest matching prefix is reused, so a step appended to
    the trajectory is not prefilled again, also when runs interleave under ``graph.batch``; the
    reuse is reported in ``StepOutput.cached_tokens``.

    Loading refuses a directory whose weights do not fit its config (missing, unexpected or
    mismatched tensors), truncated safetensors, a missing or unusable tokenizer, a tokenizer with
    ids past the embedding table, and a chat template that does not render, each with a
    ``ModelLoadError`` naming the file. A failure inside the model while generating is raised as
    ``ModelOutputError`` naming the model.

    Args:
        path: a directory with config, safetensors weights and tokenizer.
        name: the model's name in traces and costs (default: the directory name).
        system_prompt: an optional system turn (Qwen2.5-Math expects "Please reason step by
            step, and put your final answer within \\boxed{}.").
        top_k: how many log-probabilities to report per token.
        dtype: torch dtype of the weights on CPU.
        cache_slots: how many prompt prefixes' keys/values to keep (at least 1); about one per
            concurrent run is enough.

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
        cache_slots: int = 16,
    ) -> None:
        if isinstance(cache_slots, bool) or not isinstance(cache_slots, int) or cache_slots < 1:
            raise ConfigError(f"cache_slots must be an integer >= 1, got {cache_slots!r}.")
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json).")
        self.name = name or path.name
        self.path = path
        self.system_prompt = system_prompt
        self.top_k = top_k
        _check_weight_files(path)
        config = _read_config(path)
        self.tokenizer: Any
        self.model: Any  # qwen2.Qwen2 or _Transformers: logits(ids, cache), new_cache(), sizes
        if qwen2.is_plain_qwen2(path, config):  # the fast path: no transformers import
            try:
                self.tokenizer = qwen2.ChatTokenizer(path)
            except Exception as exc:  # tokenizers raises its own exception types for a corrupt file
                raise ModelLoadError(f"Could not load the tokenizer in {path} ({path / 'tokenizer.json'}): {exc}") from exc
            try:
                self.model, report = qwen2.load(path, dtype)
            except (KeyError, ValueError, TypeError) as exc:
                raise ModelLoadError(f"Could not load the model in {path} (check config.json): {type(exc).__name__}: {exc}") from exc
        else:
            self.tokenizer = _load_tokenizer(path)
            self.model, report = _load_transformers_model(path, dtype)
        _refuse_unfit_weights(path, config, report)
        self.n_params = self.model.n_params
        self.max_length = self.model.max_length
        self._eos_ids = {i for i in [*self.model.eos_token_ids, self.tokenizer.eos_token_id] if i is not None}
        self._check_tokenizer_fits_model()
        self._check_chat_template()
        self._lock = threading.Lock()  # one generation at a time: the prefix caches are shared state
        self._cache_slots = cache_slots
        self._caches: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # token ids -> their keys/values

    def prompt(self, question: str, steps: Sequence[str]) -> str:
        """The text the model continues: chat prompt, then the accepted steps and a blank line."""
        return continuation_prompt(self.tokenizer, question, steps, self.system_prompt)

    @torch.inference_mode()
    def generate_step(
        self,
        question: str,
        steps: Sequence[str],
        *,
        temperature: float = DEFAULT_TEMPERATURE,
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
        with self._lock, self._attributed("generating a step"):
            cache, cached = self._reuse_cache(prompt_ids)
            logits = self._forward(prompt_ids[cached:], cache)
            ids: list[int] = []
            max_logits: list[float] = []
            top: list[list[tuple[str, float]]] = []
            sampled: list[float] = []  # the sampled token's log-probability at temperature 1
            text = ""
            finished = False
            while len(ids) < max_tokens:
                logprobs = torch.log_softmax(logits, dim=-1)
                max_logits.append(float(logits.max()))
                values, indices = logprobs.topk(self.top_k)
                top.append([(self._token_text(int(i)), float(v)) for v, i in zip(values, indices)])
                token = _sample(logits, temperature, generator)
                ids.append(token)
                sampled.append(float(logprobs[token]))
                if token in self._eos_ids:
                    finished = True
                    break
                text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
                if STEP_SEPARATOR in text or len(ids) == max_tokens:
                    break
                logits = self._forward([token], cache)
            self._keep_cache(prompt_ids + ids[:-1], cache)
        step, _ = split_step(text)
        return StepOutput(
            text=step,
            tokens=[self._token_text(i) for i in ids],
            max_logits=max_logits,
            top_logprobs=top,
            token_logprobs=sampled,
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
        with self._attributed("scoring a step"):
            logits = self.model.logits(ids)[len(prefix) - 1 : -1]
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[len(prefix) :])[:, None])
        return [float(v) for v in logprobs.squeeze(1)]

    @torch.inference_mode()
    def question_logprob(self, question: str) -> QuestionScore:
        """The mean log-likelihood of the question's tokens in the first step's prompt (the out-of-domain signal).

        The prompt's keys/values are kept, so the first step this model writes for the question
        prefills one token: scoring with the drafting tier costs next to nothing.
        """
        prompt = self.prompt(question, [])
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) + 1 > self.max_length:
            raise ContextLimitError(f"The prompt has {len(ids)} tokens; {self.name} handles at most {self.max_length}.")
        start, end = question_span(self.tokenizer, prompt, question)
        read = ids[:-1]  # the last prompt token is fed by the step that follows
        with self._lock, self._attributed("scoring the question"):
            cache, cached = self._reuse_cache(read, at_most=start - 1)  # logits are needed from the token before the question
            logits = self.model.logits(read[cached:], cache)
            self._keep_cache(read, cache)
        rows = torch.log_softmax(logits[start - 1 - cached : end - 1 - cached], dim=-1)
        scored = rows.gather(1, torch.tensor(ids[start:end])[:, None])
        return QuestionScore(float(scored.mean()), end - start, len(read), cached)

    def _token_text(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))

    def _reuse_cache(self, prompt_ids: list[int], at_most: int | None = None) -> tuple[Any, int]:
        """A cache holding the longest kept prefix of ``prompt_ids`` (of ``at_most`` tokens at most) and that prefix's length.

        A kept sequence that the prompt fully extends is taken over; one that diverges is copied
        before it is cut back, so another run's continuation stays available to that run.
        """
        best, common = None, 0
        for key in self._caches:
            n = _common_prefix(key, prompt_ids)
            if n > common:
                best, common = key, n
        common = min(common, len(prompt_ids) - 1, len(prompt_ids) if at_most is None else at_most)  # at least one token is fed
        if best is None or common == 0:
            return self.model.new_cache(), 0
        if common == len(best):
            cache = self._caches.pop(best)  # the new sequence supersedes it
        else:
            self._caches.move_to_end(best)
            cache = copy.deepcopy(self._caches[best])
            cache.crop(common - cache.get_seq_length())  # a negative count removes that many tokens
        return cache, common

    def _keep_cache(self, ids: list[int], cache: Any) -> None:
        self._caches[tuple(ids)] = cache
        self._caches.move_to_end(tuple(ids))
        while len(self._caches) > self._cache_slots:
            self._caches.popitem(last=False)  # least recently used

    @contextmanager
    def _attributed(self, doing: str) -> Iterator[None]:
        """Raise what the model's own code raises as a ModelOutputError that names the model."""
        try:
            yield
        except (ValueError, IndexError, RuntimeError) as exc:
            if isinstance(exc, ModelOutputError):
                raise
            raise ModelOutputError(f"{self.name} ({self.path}) failed while {doing}: {type(exc).__name__}: {exc}") from exc

    def _check_tokenizer_fits_model(self) -> None:
        rows = self.model.num_embeddings
        ids = self.tokenizer(PROBE_QUESTION, add_special_tokens=False)["input_ids"]
        top = max([len(self.tokenizer) - 1, *ids])
        if top >= rows:
            raise ModelLoadError(
                f"The tokenizer in {self.path} gives token id {top}, but the model's embedding has {rows} rows "
                f"(vocab_size in {self.path / 'config.json'}): the tokenizer files do not belong to these weights."
            )
        decoded = str(self.tokenizer.decode(ids, skip_special_tokens=True))
        if decoded.split() != PROBE_QUESTION.split():
            raise ModelLoadError(
                f"The tokenizer in {self.path} does not reproduce text ({PROBE_QUESTION!r} came back as {decoded!r}): "
                f"{_tokenizer_file(self.path)} is incomplete or not this model's."
            )

    def _check_chat_template(self) -> None:
        """Render a probe prompt, so a broken template fails here and not in the middle of a run."""
        try:
            prompt = continuation_prompt(self.tokenizer, PROBE_QUESTION, [PROBE_STEP], self.system_prompt)
        except Exception as exc:  # a template can raise anything (Jinja errors, raise_exception, ...)
            raise ModelLoadError(
                f"The chat template of {self.path} ({_template_file(self.path)}) does not render a prompt: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if PROBE_QUESTION not in prompt:
            raise ModelLoadError(
                f"The chat template of {self.path} ({_template_file(self.path)}) drops the user's question from the prompt."
            )

    def _forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        return self.model.logits(ids, cache)[-1]


def check_tier_tokenizers(tiers: Sequence[Any]) -> None:
    """Warn when two tiers share a prompt format but not a tokenizer.

    Tiers exchange text, so tiers of different families (another vocabulary size or chat
    template) may tokenize differently. Two tiers with the same chat template and vocabulary size
    are one family, and then a different vocabulary (e.g. swapped digits) means one tokenizer is
    not its model's: answers go silently wrong, so say so before the run.
    """
    local = [t for t in tiers if isinstance(t, TransformersStepModel)]
    for i, a in enumerate(local):
        for b in local[i + 1 :]:
            same_format = a.tokenizer.chat_template == b.tokenizer.chat_template and len(a.tokenizer) == len(b.tokenizer)
            if same_format and a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
                differ = [
                    t for t in dict.fromkeys(PROBE_QUESTION.split())
                    if a.tokenizer.encode(t, add_special_tokens=False) != b.tokenizer.encode(t, add_special_tokens=False)
                ]
                warnings.warn(
                    f"Tiers {a.name} ({a.path}) and {b.name} ({b.path}) share a chat template and vocabulary size "
                    f"but not a vocabulary (they tokenize {differ or 'some text'} differently): one tokenizer does not "
                    "belong to its weights. Check each directory's tokenizer.json.",
                    UserWarning,
                    stacklevel=2,
                )


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{path} has no tokenizer file (tokenizer.json, or one of {', '.join(TOKENIZER_FILES[1:])}): "
            "copy the tokenizer files that came with the weights into it."
        )
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # tokenizers raises its own exception types for a corrupt file
        raise ModelLoadError(f"Could not load the tokenizer in {path} ({_tokenizer_file(path)}): {exc}") from exc


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not read {path / 'config.json'}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'} must hold a JSON object, not {type(config).__name__}.")
    return config


def _check_weight_files(path: Path) -> None:
    """Find missing, truncated or corrupt safetensors files before any loader reads them."""
    from safetensors import SafetensorError, safe_open

    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelLoadError(f"{path} has no safetensors weights (model.safetensors); other formats are not loaded.")
    for file in weights:
        try:
            with safe_open(file, framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{file} is truncated or corrupted ({exc}); download or copy it again.") from exc


def _refuse_unfit_weights(path: Path, config: dict[str, Any], report: dict[str, Any]) -> None:
    """Refuse weights that do not fit the config instead of running on random or dropped tensors."""
    problems = []
    for kind, what in (
        ("missing_keys", "missing from the weights (they would be random)"),
        ("unexpected_keys", "in the weights but not in the model (they would be dropped)"),
        ("mismatched_keys", "of another shape in the weights than in config.json"),
    ):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in report.get(kind) or [])
        if keys:
            problems.append(f"{what}: " + ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else ""))
    if problems:
        raise ModelLoadError(
            f"The weights in {path} do not fit its config.json (model_type {config.get('model_type')!r}, "
            f"{config.get('num_hidden_layers', '?')} layers); tensors " + "; tensors ".join(problems)
            + ". Use the config.json that came with these weights."
        )


class _Transformers:
    """A transformers causal LM behind the interface of ``qwen2.Qwen2``."""

    def __init__(self, module: Any) -> None:
        self.module = module
        config = module.config
        self.n_params = sum(p.numel() for p in module.parameters())
        self.num_embeddings = module.get_input_embeddings().num_embeddings
        self.max_length = int(getattr(config, "max_position_embeddings", 2048))
        self.eos_token_ids = _as_list(config.eos_token_id)
        # transformers renamed ``past_key_values`` to ``cache`` (the old name warns on every call): pass the one it takes.
        self.cache_arg = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.module.config)

    def logits(self, ids: Sequence[int], cache: Any = None) -> torch.Tensor:
        out = self.module(input_ids=torch.tensor([list(ids)]), use_cache=cache is not None, **{self.cache_arg: cache})
        return out.logits[0].float()


def _load_transformers_model(path: Path, dtype: torch.dtype) -> tuple[_Transformers, dict[str, Any]]:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():  # its load report is ours to judge and word
            loaded: Any = AutoModelForCausalLM.from_pretrained(  # (model, report) with output_loading_info
                path, dtype=dtype, use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True
            )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(f"Could not load the model in {path}: {exc}") from exc
    model, report = loaded
    return _Transformers(model.eval()), report


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar per model drowns the CLI's output
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _tokenizer_file(path: Path) -> str:
    return next((str(path / f) for f in TOKENIZER_FILES if (path / f).is_file()), str(path / "tokenizer.json"))


def _template_file(path: Path) -> str:
    jinja = path / "chat_template.jinja"
    return str(jinja if jinja.is_file() else path / "tokenizer_config.json")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _sample(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _as_list(value: int | list[int] | None) -> list[int | None]:
    return list(value) if isinstance(value, list) else [value]
