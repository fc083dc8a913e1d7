"""Error taxonomy of a tier's wrong steps on task v2, and which routing features flag them (issue 28, item 4).

A model answers test-split problems alone (as the draft writes steps for the router: sampled at
the default temperature unless told otherwise). Each step is judged by ``wordproblems.classify_step``
given the model's own steps before it, and observed as the router observes a draft step
(``features.observe``, with the question and the prior steps). For the wrong steps of each kind
the table gives their share and the share each feature flags: ``arithmetic_error`` = 1,
``ungrounded_operands`` > 0, either of them (the two-feature hand rule), a final step that leaves a question
number unused (``unused_question_numbers`` > 0), and a low confidence
(``logit_confidence`` or ``sampled_logprob_min`` below the 10th percentile of the right steps',
so each flags 10% of right steps). The last row gives the right steps' flag rates (false alarms).

Example:
    OMP_NUM_THREADS=1 stepgraph taxonomy --model stepgraph/testbed/models/draft --problems 300
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from stepgraph.errors import ConfigError
from stepgraph.features import Observation, observe
from stepgraph.models.base import DEFAULT_TEMPERATURE, StepOutput
from stepgraph.testbed import wordproblems
from stepgraph.testbed.measure import batched_solutions, load_hf

LOW_CONFIDENCE = ("logit_confidence", "sampled_logprob_min")
"""Confidence features flagged when below the right steps' ``FALSE_ALARM`` quantile."""
FALSE_ALARM = 0.10

Judged = tuple[str | None, Observation]
"""One step: its error kind (None when right) and its observation."""


def judge_steps(problems: Sequence[wordproblems.WordProblem], solutions: Sequence[Sequence[StepOutput]]) -> list[Judged]:
    """Every generated step's error kind and its router observation, given the model's own prior steps."""
    judged: list[Judged] = []
    for problem, outputs in zip(problems, solutions, strict=True):
        steps: list[str] = []
        previous = None
        for out in outputs:
            obs = observe(out, step_index=len(steps), escalations=0, question=problem.question, prior_steps=steps, previous=previous)
            judged.append((wordproblems.classify_step(problem, steps, out.text), obs))
            steps.append(out.text)
            previous = {"observation": obs, "escalated": False}
    return judged


def _flags(right: list[Observation]) -> dict[str, Callable[[Observation], bool]]:
    flags: dict[str, Callable[[Observation], bool]] = {
        "arithmetic_error": lambda o: o.get("arithmetic_error") == 1.0,
        "ungrounded_operands": lambda o: (o.get("ungrounded_operands") or 0.0) > 0,
    }
    flags["either (hand rule)"] = lambda o: flags["arithmetic_error"](o) or flags["ungrounded_operands"](o)
    flags["unused numbers, final step"] = lambda o: o.get("is_final") == 1.0 and (o.get("unused_question_numbers") or 0.0) > 0
    for name in LOW_CONFIDENCE:
        values = [float(v) for o in right if (v := o.get(name)) is not None]
        flags[f"low {name}"] = _below(name, float(np.quantile(values, FALSE_ALARM)) if values else float("-inf"))
    return flags


def _below(name: str, cut: float) -> Callable[[Observation], bool]:
    def flag(observation: Observation) -> bool:
        value = observation.get(name)
        return value is not None and value < cut

    return flag


def taxonomy(judged: list[Judged]) -> dict:
    """Per error kind: wrong steps, their share, and the share each feature flags; plus all wrong and the right steps."""
    right = [obs for kind, obs in judged if kind is None]
    wrong = [(kind, obs) for kind, obs in judged if kind is not None]
    flags = _flags(right)

    def row(observations: list[Observation], total: int) -> dict:
        n = len(observations)
        return {"steps": n, "share": round(n / max(1, total), 4),
                "flagged": {name: round(sum(map(flag, observations)) / n, 4) if n else None for name, flag in flags.items()}}

    rows: dict[str, dict] = {kind: row([obs for k, obs in wrong if k == kind], len(wrong)) for kind in wordproblems.ERROR_KINDS}
    rows["all wrong steps"] = row([obs for _, obs in wrong], len(wrong))
    rows["right steps (false alarms)"] = row(right, len(right))
    return {"steps": len(judged), "wrong_steps": len(wrong), "flags": list(flags), "rows": rows}


def markdown(report: dict, command: str) -> str:
    """The taxonomy as a BENCHMARKS.md table, with the command that produced it."""
    head = ["error kind", "wrong steps", "share", *report["flags"]]
    lines = [f"`{command}` ({report['steps']} steps, {report['wrong_steps']} wrong)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, r in report["rows"].items():
        share = "" if kind.startswith("right") else f"{r['share']:.1%}"
        cells = ["" if v is None else f"{v:.0%}" for v in r["flagged"].values()]
        lines.append("| " + " | ".join([kind.replace("_", " "), str(r["steps"]), share, *cells]) + " |")
    return "\n".join(lines) + "\n"


def error_taxonomy(model: Path, *, problems: int = 300, seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
                   split: str = "test", command: str = "") -> str:
    """The markdown taxonomy table of ``model`` (a saved v2 model directory) answering ``problems`` problems of ``split``
    alone; ``command`` is printed beside it (what reproduces it)."""
    if not (Path(model) / "config.json").is_file():
        raise ConfigError(f"--model {model} is not a saved model directory (no config.json).")
    torch.set_num_threads(1)
    chosen = wordproblems.generate(split, problems, seed=seed)  # type: ignore[arg-type]
    hf_model, tokenizer = load_hf(Path(model))
    solutions = batched_solutions(hf_model, tokenizer, [p.question for p in chosen], name=Path(model).name,
                                  temperature=temperature, seed=seed)
    return markdown(taxonomy(judge_steps(chosen, solutions)), command)


if __name__ == "__main__":
    from stepgraph.cli import run_old_path

    run_old_path(__spec__.name, "taxonomy")
