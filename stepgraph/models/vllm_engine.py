"""vLLM offline-engine backend: a ``vllm.LLM`` writes the steps, batched across graph runs.

Install with ``pip install "stepgraph[vllm]"`` (see the README for the CPU recipe). Start the
engine with ``logprobs_mode="raw_logits"`` and the reported top-k values are raw logits, so the
top one is exactly the max logit STEER's score is built from (``logit_confidence``). With vLLM's
default ``raw_logprobs`` they are log-probabilities instead and give ``api_confidence``. An
engine reports one kind, never both, so the other feature is None: route a raw-logits draft with
a policy trained without ``api_confidence`` (``stepgraph.testbed.defaults.LOGITS_ONLY_POLICY_DIR`` for
the shipped pair).

Concurrent calls share the engine by continuous batching: one driver thread steps the engine,
and a step requested while others are decoding joins them at the next engine iteration, so a
batch of 16 runs decodes up to 16 steps in each forward pass. ``generate_step`` serves threads
(``graph.batch(...)``); ``agenerate_step`` serves the graph's async runs (``stepgraph serve``)
without a thread per call.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

from stepgraph.errors import ContextLimitError, ModelLoadError, ModelOutputError
from stepgraph.models.base import (
    DEFAULT_TEMPERATURE,
    STEP_SEPARATOR,
    QuestionScore,
    StepOutput,
    continuation_prompt,
    question_span,
    split_step,
)

if TYPE_CHECKING:
    from vllm import LLM, RequestOutput, SamplingParams

LOGIT_MODES = ("raw_logits", "processed_logits")
ENGINE_POLL_SECONDS = 1.0  # how often a waiting call checks that the engine is still alive


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ModelLoadError(
            'The vLLM backend needs vLLM: pip install "stepgraph[vllm]" (on CPU, see the README for the recipe).'
        ) from exc
    return vllm


def count_parameters(model: str | Path) -> int:
    """Parameters in a model's safetensors files (a directory, or a hub id already in the local
    Hugging Face cache, as vLLM leaves it), read from the file headers only."""
    from safetensors import safe_open

    directory = Path(model)
    if not directory.is_dir():
        from huggingface_hub import snapshot_download

        try:
            directory = Path(snapshot_download(str(model), local_files_only=True, allow_patterns=["*.safetensors"]))
        except Exception as exc:  # not cached, or not a hub id: one clear error
            raise ModelLoadError(f"{model} is neither a directory nor in the local Hugging Face cache; pass n_params.") from exc
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"No *.safetensors in {directory}; pass n_params explicitly.")
    total = 0
    for file in files:
        with safe_open(str(file), framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118 -- safe_open is not iterable
                n = 1
                for dim in handle.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    result: Future[RequestOutput]


class VLLMStepModel:
    """Generate one reasoning step at a time with a vLLM offline engine.

    Args:
        llm: a ``vllm.LLM`` configured as you run it, or a model directory / hub id to start one
            with ``engine_kwargs`` (defaults: ``logprobs_mode="raw_logits"``,
            ``enable_prefix_caching=True``).
        name: the model's name in traces and costs (default: the directory name).
        n_params: parameter count for FLOPs (default: read from the model's safetensors).
        system_prompt: an optional system turn (the same prompt as ``TransformersStepModel``).
        top_k: how many log-probabilities (or logits) to request per token.
        engine_kwargs: extra ``vllm.LLM`` arguments when ``llm`` is a path.

    Example (``if __name__ == "__main__":`` guarded: the engine starts worker processes):
        >>> model = VLLMStepModel("Qwen/Qwen2.5-Math-1.5B-Instruct")  # doctest: +SKIP
        >>> model.generate_step("What is 2 + 3?", []).max_logits  # doctest: +SKIP
    """

    def __init__(self, llm: LLM | str | Path, *, name: str | None = None, n_params: int | None = None,
                 system_prompt: str | None = None, top_k: int = 5, engine_kwargs: dict[str, Any] | None = None) -> None:
        if isinstance(llm, (str, Path)) and n_params is None:
            n_params = count_parameters(llm)  # before starting the engine: a bad directory fails fast
        self.llm = start_engine(llm, **(engine_kwargs or {})) if isinstance(llm, (str, Path)) else llm
        config = self.llm.llm_engine.model_config
        self.tokenizer = self.llm.get_tokenizer()
        self.logprobs_mode = str(config.logprobs_mode)
        self.max_length = int(config.max_model_len)
        self.name = name or Path(str(config.model)).name
        self.n_params = n_params if n_params is not None else count_parameters(config.model)
        self.system_prompt = system_prompt
        self.top_k = top_k
        self._new: list[_Request] = []  # submitted, not yet added to the engine
        self._running: dict[str, _Request] = {}  # in the engine; only the driver thread touches these
        self._wake = threading.Condition()
        self._driver: threading.Thread | None = None
        self._ids = itertools.count()
        self.batch_sizes: Counter[int] = Counter()  # engine iterations by how many steps they decoded

    def close(self) -> None:
        """Stop the engine's worker processes (the engine cannot be used after this)."""
        self.llm.llm_engine.engine_core.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prompt(self, question: str, steps: Sequence[str]) -> str:
        """The text the model continues: chat prompt, then the accepted steps and a blank line."""
        return continuation_prompt(self.tokenizer, question, steps, self.system_prompt)

    def generate_step(self, question: str, steps: Sequence[str], *, temperature: float = DEFAULT_TEMPERATURE, seed: int | None = None,
                      max_tokens: int = 64) -> StepOutput:
        request = self._submit(self._prompt_ids(self.prompt(question, steps)), temperature=temperature, seed=seed, max_tokens=max_tokens)
        return self._step_output(self._wait(request.result), len(request.prompt_ids))

    async def agenerate_step(self, question: str, steps: Sequence[str], *, temperature: float = DEFAULT_TEMPERATURE,
                             seed: int | None = None, max_tokens: int = 64) -> StepOutput:
        """``generate_step`` without a thread per call: a server's concurrent runs all join the batch.

        (Through a thread each, they would be capped by the event loop's default executor, a handful
        of threads on a small machine, and so would the engine's batch.)
        """
        request = self._submit(self._prompt_ids(self.prompt(question, steps)), temperature=temperature, seed=seed, max_tokens=max_tokens)
        result = asyncio.wrap_future(request.result)
        while True:
            try:
                output = await asyncio.wait_for(asyncio.shield(result), ENGINE_POLL_SECONDS)
                break
            except TimeoutError:
                if not self.engine_alive():
                    raise ModelOutputError(f"{self.name} (vLLM engine) failed: the engine process exited.") from None
        return self._step_output(output, len(request.prompt_ids))

    def question_logprob(self, question: str) -> QuestionScore | None:
        """The mean log-likelihood of the question's tokens in the first step's prompt (vLLM's ``prompt_logprobs``),
        or None for an engine in a logit mode: its prompt scores are raw logits, which one token's value cannot normalise.

        The engine generates one token (vLLM generates at least one); the prompt's blocks stay in its prefix cache.
        """
        if self.logprobs_mode in LOGIT_MODES:
            return None
        prompt = self.prompt(question, [])
        start, end = question_span(self.tokenizer, prompt, question)
        request = self._submit(self._prompt_ids(prompt), temperature=0.0, seed=None, max_tokens=1, prompt_logprobs=0)
        out = self._wait(request.result)
        rows, ids = out.prompt_logprobs or [], request.prompt_ids
        try:
            values = [float(rows[i][ids[i]].logprob) for i in range(start, end)]  # type: ignore[index]
        except (IndexError, KeyError, TypeError) as exc:
            raise ModelOutputError(f"{self.name} returned no prompt log-probability for the question's tokens ({exc!r}).") from exc
        return QuestionScore(sum(values) / len(values), end - start, len(ids), int(out.num_cached_tokens or 0),
                             len(out.outputs[0].token_ids))

    def _prompt_ids(self, prompt: str) -> list[int]:
        prompt_ids: list[int] = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + 1 > self.max_length:
            raise ContextLimitError(f"The prompt has {len(prompt_ids)} tokens; {self.name} handles at most {self.max_length}.")
        return prompt_ids

    def _submit(self, prompt_ids: list[int], *, temperature: float, seed: int | None, max_tokens: int,
                prompt_logprobs: int | None = None) -> _Request:
        """Queue one request for the driver thread, starting it on first use."""
        vllm = _import_vllm()
        params = vllm.SamplingParams(
            temperature=temperature, seed=seed, logprobs=self.top_k, stop=[STEP_SEPARATOR],
            max_tokens=min(max_tokens, self.max_length - len(prompt_ids)), prompt_logprobs=prompt_logprobs,
        )
        params.output_kind = vllm.sampling_params.RequestOutputKind.FINAL_ONLY
        request = _Request(prompt_ids, params, Future())
        with self._wake:
            if self._driver is None:
                self._driver = threading.Thread(target=self._drive, name=f"vllm-{self.name}", daemon=True)
                self._driver.start()
            self._new.append(request)
            self._wake.notify()
        return request

    def _wait(self, result: Future[RequestOutput]) -> RequestOutput:
        """The request's output; vLLM's synchronous client waits forever when the engine process dies."""
        while True:
            try:
                return result.result(timeout=ENGINE_POLL_SECONDS)
            except FutureTimeout:
                if not self.engine_alive():
                    raise ModelOutputError(f"{self.name} (vLLM engine) failed: the engine process exited.") from None

    def _drive(self) -> None:
        """The one thread that calls the engine: add what was submitted, run one iteration, hand out results."""
        engine = self.llm.llm_engine
        while True:
            with self._wake:
                while not self._new and not self._running:
                    self._wake.wait()
                new, self._new = self._new, []
            for request in new:
                request_id = f"stepgraph-{next(self._ids)}"
                try:
                    engine.add_request(request_id, {"prompt_token_ids": request.prompt_ids}, request.params)
                except Exception as exc:  # noqa: BLE001 -- refused (e.g. bad parameters): that caller gets it
                    request.result.set_exception(ModelOutputError(f"{self.name} (vLLM engine) refused a step: {exc}"))
                    continue
                self._running[request_id] = request
            if not self._running:
                continue
            try:
                outputs = engine.step()
            except Exception as exc:  # noqa: BLE001 -- the engine failed: every running caller gets the error
                for request in self._running.values():
                    request.result.set_exception(ModelOutputError(f"{self.name} (vLLM engine) failed: {type(exc).__name__}: {exc}"))
                self._running.clear()
                continue
            self.batch_sizes[len(self._running)] += 1
            for output in outputs:
                if output.finished:
                    self._running.pop(output.request_id).result.set_result(cast("RequestOutput", output))

    def engine_alive(self) -> bool:
        """Whether the engine's core processes are running (True where vLLM runs them in-process)."""
        resources = getattr(self.llm.llm_engine.engine_core, "resources", None)
        if resources is None:
            return True
        manager = getattr(resources, "engine_manager", None)
        processes = getattr(manager, "processes", [])
        return not resources.engine_dead and all(p.is_alive() for p in processes)

    def _step_output(self, out: RequestOutput, prompt_tokens: int) -> StepOutput:
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        positions = completion.logprobs or []
        if len(positions) != len(ids):
            raise ModelOutputError(f"{self.name} returned {len(positions)} logprob rows for {len(ids)} tokens.")
        # by rank; the sampled token is listed too when it is outside the top k, and dropped here
        rows = [sorted(pos.items(), key=lambda kv: kv[1].rank or 0)[: self.top_k] for pos in positions]
        as_logits = self.logprobs_mode in LOGIT_MODES
        text, _ = split_step(completion.text)
        return StepOutput(
            text=text,
            tokens=[self._token_text(i) for i in ids],
            max_logits=[max(lp.logprob for _, lp in row) for row in rows] if as_logits else None,
            top_logprobs=[] if as_logits else [[(self._token_text(t), lp.logprob) for t, lp in row] for row in rows],
            token_logprobs=None if as_logits else _sampled_logprobs(positions, ids),
            prompt_tokens=prompt_tokens,
            cached_tokens=int(out.num_cached_tokens or 0),
            generated_tokens=len(ids),
            # a matched stop string is reported in stop_reason; None with "stop" means end of sequence
            finished=completion.finish_reason == "stop" and completion.stop_reason is None,
            model=self.name,
        )

    def _token_text(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))


def _sampled_logprobs(positions: Sequence[dict[int, Any] | None], ids: Sequence[int]) -> list[float] | None:
    """Each sampled token's log-probability: vLLM lists the sampled token at its position even outside the top k."""
    if not all(pos and i in pos for pos, i in zip(positions, ids)):
        return None
    return [float(pos[i].logprob) for pos, i in zip(positions, ids)]  # type: ignore[index]


def start_engine(model: str | Path, **engine_kwargs: Any) -> LLM:
    """Start a ``vllm.LLM`` for ``model`` with stepgraph's defaults, overridable by ``engine_kwargs``."""
    vllm = _import_vllm()
    kwargs: dict[str, Any] = {"logprobs_mode": "raw_logits", "enable_prefix_caching": True, **engine_kwargs}
    try:
        return vllm.LLM(model=str(model), **kwargs)
    except Exception as exc:  # vLLM raises many types on bad configs; one clear error for the caller
        raise ModelLoadError(f"vLLM could not start an engine for {model}: {type(exc).__name__}: {exc}") from exc
