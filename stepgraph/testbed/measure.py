"""Measure testbed models: accuracies, step-confidence AUROC and time per problem.

Works for both tasks: ``task`` (v1, the shipped models, sampled step by step) and
``wordproblems`` (v2, greedy, generated in left-padded batches by ``batched_solutions``). Both
task modules offer ``generate``, ``verify_step``, ``boxed_value`` and ``is_final_step``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from tqdm import tqdm

from stepgraph.features import logit_confidence
from stepgraph.models.base import (
    DEFAULT_TEMPERATURE,
    STEP_SEPARATOR,
    StepModel,
    StepOutput,
    continuation_prompt,
    split_step,
)
from stepgraph.models.local import TransformersStepModel
from stepgraph.testbed import task, wordproblems

MAX_STEPS = 8
TASKS: dict[str, ModuleType] = {"v1": task, "v2": wordproblems}
V2_SPLITS = ("test", "heldout")


@dataclass
class Solved:
    """One model's whole answer to one problem, with per-step verdicts."""

    outputs: list[StepOutput]
    verdicts: list[bool]
    answer: int | None
    correct: bool
    seconds: float


def judge(task_module: ModuleType, problem: Any, outputs: list[StepOutput], seconds: float) -> Solved:
    """Judge each step given the model's own steps before it, and the boxed answer."""
    steps = [out.text for out in outputs]
    verdicts = [task_module.verify_step(problem, steps[:i], text) for i, text in enumerate(steps)]
    answer = task_module.boxed_value(steps[-1]) if steps else None
    return Solved(outputs, verdicts, answer, answer == problem.answer, seconds)


def solve_alone(model: StepModel, problem: task.Problem, *, temperature: float, seed: int, task_module: ModuleType = task) -> Solved:
    """Answer a problem with one model, step by step, judging every step with the verifier."""
    outputs: list[StepOutput] = []
    started = time.perf_counter()
    for index in range(MAX_STEPS):
        out = model.generate_step(problem.question, [o.text for o in outputs], temperature=temperature, seed=seed * 100 + index)
        outputs.append(out)
        if task_module.is_final_step(out.text) or out.finished:
            break
    return judge(task_module, problem, outputs, time.perf_counter() - started)


def auroc(scores_negative: list[float], scores_positive: list[float]) -> float:
    """P(score of a random negative < score of a random positive), ties counted half."""
    if not scores_negative or not scores_positive:
        return float("nan")
    wins = 0.0
    for neg in scores_negative:
        for pos in scores_positive:
            wins += 1.0 if neg < pos else 0.5 if neg == pos else 0.0
    return wins / (len(scores_negative) * len(scores_positive))


def mean_token_probability(step: StepOutput) -> float | None:
    """The mean probability the model gave the tokens it wrote; None without sampled log-probabilities."""
    lps = step.token_logprobs
    return sum(math.exp(lp) for lp in lps) / len(lps) if lps else None


CONFIDENCES = {"auroc_low_confidence_is_wrong": logit_confidence, "auroc_low_token_probability_is_wrong": mean_token_probability}
"""AUROC keys of a measurement → the step score each judges: STEER's (the library's) and the mean token probability."""


def summarize(name: str, n_params: int, solved: list[Solved]) -> dict:
    """Accuracy, step accuracy, AUROC of each confidence for wrong steps, seconds per problem."""
    verdicts = [ok for s in solved for ok in s.verdicts]
    report = {
        "model": name,
        "parameters": n_params,
        "problems": len(solved),
        "accuracy": round(sum(s.correct for s in solved) / len(solved), 4),
        "step_accuracy": round(sum(verdicts) / max(1, len(verdicts)), 4),
        "wrong_steps": verdicts.count(False),
    }
    for key, confidence in CONFIDENCES.items():
        right: list[float] = []
        wrong: list[float] = []
        for s in solved:
            for out, ok in zip(s.outputs, s.verdicts):
                score = confidence(out)
                if score is not None:
                    (right if ok else wrong).append(score)
        # None when every step was right (nothing to separate) or the backend gave no scores.
        report[key] = round(auroc(wrong, right), 4) if wrong and right else None
    report["seconds_per_problem"] = round(sum(s.seconds for s in solved) / len(solved), 4)
    return report


def measure_model(model: StepModel, problems: list[task.Problem], *, temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> dict:
    """Measure one v1 model answering step by step (sampled); see ``summarize``."""
    solved = [solve_alone(model, p, temperature=temperature, seed=seed + i) for i, p in enumerate(tqdm(problems, desc=model.name))]
    return summarize(model.name, model.n_params, solved)


def measure_models(dirs: dict[str, Path], *, n_problems: int = 300, seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
                   task_name: str = "v1") -> dict:
    """Measure each model (role → directory) on ``n_problems`` problems of each split.

    v1: the test split, sampled step by step at ``temperature``, on the same samples' seeds.
    v2: the test and heldout splits, greedy (``temperature`` is ignored), batched; the report
    holds one entry per split, each with one entry per role.
    """
    if task_name == "v1":
        problems = task.generate("test", n_problems, seed=seed)
        report: dict = {"split": "test", "temperature": temperature, "seed": seed}
        for role, path in dirs.items():
            report[role] = measure_model(TransformersStepModel(path), problems, temperature=temperature, seed=seed)
        return report
    if task_name != "v2":
        raise ValueError(f"Unknown task {task_name!r}; choose from {sorted(TASKS)}.")
    report = {"task": "v2", "decoding": "greedy", "seed": seed, "problems": n_problems}
    for split in V2_SPLITS:
        word_problems = wordproblems.generate(split, n_problems, seed=seed)  # type: ignore[arg-type]
        report[split] = {role: measure_v2(path, word_problems, name=role) for role, path in dirs.items()}
    return report


def measure_v2(path: Path, problems: list[wordproblems.WordProblem], *, name: str | None = None) -> dict:
    """Measure one v2 model directory on ``problems``, greedy and batched; see ``summarize``."""
    model, tokenizer = load_hf(path)
    started = time.perf_counter()
    solutions = batched_solutions(model, tokenizer, [p.question for p in problems], name=name or path.name)
    seconds = (time.perf_counter() - started) / len(problems)
    solved = [judge(wordproblems, p, outs, seconds) for p, outs in zip(problems, solutions)]
    return summarize(name or path.name, sum(p.numel() for p in model.parameters()), solved)


def load_hf(path: Path) -> tuple[Any, Any]:
    """A saved model directory as a transformers (model, tokenizer) pair, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.inference_mode()
def batched_solutions(model: Any, tokenizer: Any, questions: Sequence[str], *, name: str = "model", batch_size: int = 32,
                      max_new_tokens: int = 256, temperature: float = 0.0, seed: int = 0, top_k: int = 5) -> list[list[StepOutput]]:
    """Each question's whole answer in one generate call per batch, cut into steps like ``generate_step``'s.

    Prompts are left-padded and sorted by length; decoding is greedy at ``temperature`` 0, else
    sampled from the full distribution (seeded by ``seed``). A step ends at the token whose text
    completes a blank line (that token belongs to it, as in ``TransformersStepModel``); the
    answer ends at end-of-sequence, after ``MAX_STEPS`` steps, or at ``max_new_tokens``. Each
    step's statistics (max raw logit, top-k and sampled log-probabilities at temperature 1) are
    what ``generate_step`` reports, so the confidence features read them the same way; greedy
    steps equal stepwise greedy generation's wherever the text re-tokenizes to the same ids.
    """
    tokenizer.padding_side = "left"
    prompts = [continuation_prompt(tokenizer, q, []) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[StepOutput]] = [[] for _ in prompts]
    torch.manual_seed(seed)
    for first in tqdm(range(0, len(order), batch_size), desc=name):
        rows = order[first : first + batch_size]
        batch = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, output_logits=True, return_dict_in_generate=True,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sampling)
        logits = torch.stack(out.logits, dim=1).float()  # (batch, new tokens, vocab), raw
        width = batch["input_ids"].shape[1]
        for row, index in enumerate(rows):
            prompt_tokens = int(batch["attention_mask"][row].sum())
            results[index] = _steps(tokenizer, out.sequences[row, width:].tolist(), logits[row], prompt_tokens, name, top_k)
    return results


def _steps(tokenizer: Any, ids: list[int], logits: torch.Tensor, prompt_tokens: int, name: str, top_k: int) -> list[StepOutput]:
    """Cut one generated answer into StepOutputs at its step breaks."""
    logprobs = torch.log_softmax(logits, dim=-1)
    steps: list[StepOutput] = []
    start = 0
    for end in range(len(ids)):
        finished = ids[end] == tokenizer.eos_token_id
        text = str(tokenizer.decode(ids[start : end + 1], skip_special_tokens=True))
        if not (finished or STEP_SEPARATOR in text or end == len(ids) - 1):
            continue
        positions = range(start, end + 1)
        values, indices = logprobs[start : end + 1].topk(top_k, dim=-1)
        steps.append(StepOutput(
            text=split_step(text)[0],
            tokens=[str(tokenizer.decode([ids[i]])) for i in positions],
            max_logits=logits[start : end + 1].max(dim=-1).values.tolist(),
            top_logprobs=[[(str(tokenizer.decode([int(i)])), float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values, indices)],
            token_logprobs=[float(logprobs[i, ids[i]]) for i in positions],
            prompt_tokens=prompt_tokens + start, cached_tokens=0, generated_tokens=end + 1 - start,
            finished=finished, model=name,
        ))
        start = end + 1
        if finished or len(steps) == MAX_STEPS or wordproblems.is_final_step(steps[-1].text):
            break
    return steps
