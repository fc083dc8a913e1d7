"""Measure a testbed model pair: accuracies, step-confidence AUROC and time per problem."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from stepgraph.features import logit_confidence
from stepgraph.models.base import DEFAULT_TEMPERATURE, StepModel, StepOutput
from stepgraph.models.local import TransformersStepModel
from stepgraph.testbed import task

MAX_STEPS = 8


@dataclass
class Solved:
    """One model's whole answer to one problem, with per-step verdicts."""

    outputs: list[StepOutput]
    verdicts: list[bool]
    answer: int | None
    correct: bool
    seconds: float


def solve_alone(model: StepModel, problem: task.Problem, *, temperature: float, seed: int) -> Solved:
    """Answer a problem with one model, step by step, judging every step with the verifier."""
    steps: list[str] = []
    outputs: list[StepOutput] = []
    verdicts: list[bool] = []
    started = time.perf_counter()
    for index in range(MAX_STEPS):
        out = model.generate_step(problem.question, steps, temperature=temperature, seed=seed * 100 + index)
        verdicts.append(task.verify_step(problem, steps, out.text))
        steps.append(out.text)
        outputs.append(out)
        if task.is_final_step(out.text) or out.finished:
            break
    answer = task.boxed_value(steps[-1]) if steps else None
    return Solved(outputs, verdicts, answer, answer == problem.answer, time.perf_counter() - started)


def auroc(scores_negative: list[float], scores_positive: list[float]) -> float:
    """P(score of a random negative < score of a random positive), ties counted half."""
    if not scores_negative or not scores_positive:
        return float("nan")
    wins = 0.0
    for neg in scores_negative:
        for pos in scores_positive:
            wins += 1.0 if neg < pos else 0.5 if neg == pos else 0.0
    return wins / (len(scores_negative) * len(scores_positive))


def measure_model(model: StepModel, problems: list[task.Problem], *, temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> dict:
    """Accuracy, step accuracy, AUROC of the STEER score for wrong steps, seconds per problem."""
    solved = [solve_alone(model, p, temperature=temperature, seed=seed + i) for i, p in enumerate(tqdm(problems, desc=model.name))]
    right_scores: list[float] = []
    wrong_scores: list[float] = []
    for s in solved:
        for out, ok in zip(s.outputs, s.verdicts):
            score = logit_confidence(out)
            if score is not None:
                (right_scores if ok else wrong_scores).append(score)
    n_steps = len(right_scores) + len(wrong_scores)
    return {
        "model": model.name,
        "parameters": model.n_params,
        "problems": len(problems),
        "accuracy": round(sum(s.correct for s in solved) / len(solved), 4),
        "step_accuracy": round(len(right_scores) / max(1, n_steps), 4),
        "wrong_steps": len(wrong_scores),
        # None when every step was right (nothing to separate).
        "auroc_low_confidence_is_wrong": round(auroc(wrong_scores, right_scores), 4) if wrong_scores else None,
        "seconds_per_problem": round(sum(s.seconds for s in solved) / len(solved), 4),
    }


def measure_models(dirs: dict[str, Path], *, n_problems: int = 300, seed: int = 0, temperature: float = DEFAULT_TEMPERATURE) -> dict:
    """Measure each model (role → directory) on the first ``n_problems`` of the test split, on the same samples' seeds."""
    problems = task.generate("test", n_problems, seed=seed)
    report: dict = {"split": "test", "temperature": temperature, "seed": seed}
    for role, path in dirs.items():
        report[role] = measure_model(TransformersStepModel(path), problems, temperature=temperature, seed=seed)
    return report
