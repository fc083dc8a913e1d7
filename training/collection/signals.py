"""How well each observation flags a wrong draft step: per-step AUROC and escalation at 95% recall.

    stepgraph signals --store runs/traces.sqlite [--fit train --eval calibration]

The steps are the draft steps written after a correct prefix (every step the routed answer kept
before it is verified right), labelled wrong when the verifier rejects the draft. A single
feature is oriented on the fit split (higher must mean "more likely wrong"); a set of features
is combined by a logistic regression fitted on the fit split. Both are scored on the eval split:
AUROC, and the fraction of steps a threshold must escalate to catch 95% of the wrong ones (the
oracle escalates exactly the wrong ones). Observations are recomputed from the stored drafts
(``reobserve``), so a store collected before a feature existed is measured with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from stepgraph.training.collection.observations import reobserve
from stepgraph.training.data.records import Episode

FREE = ["api_confidence", "logit_confidence", "sampled_logprob_sum", "sampled_logprob_min", "margin_min", "entropy_max",
        "result_digit_min", "step_index", "step_tokens", "is_final"]
STEPWISE = ["previous_escalated", "previous_sampled_logprob_min", "escalations"]
ALL_V2 = [*FREE, "ungrounded_operands", "arithmetic_error", *STEPWISE]
SETS: dict[str, list[str]] = {
    **{name: [name] for name in ("api_confidence", "logit_confidence", "sampled_logprob_sum", "sampled_logprob_min",
                                 "margin_min", "entropy_max", "result_digit_min", "ungrounded_operands", "arithmetic_error",
                                 "unused_question_numbers", "word_sampled_logprob_sum", "word_sampled_logprob_min", "word_margin_min")},
    "top-k summaries + sampled prob": ["sampled_logprob_sum", "sampled_logprob_min", "margin_min", "entropy_max", "result_digit_min"],
    "free per-token (all)": FREE,
    "free + grounding": [*FREE, "ungrounded_operands"],
    "free + grounding + stepwise": [*FREE, "ungrounded_operands", *STEPWISE],
    "free + grounding + arithmetic check + stepwise": ALL_V2,
    "all of v3 (+ unused question numbers)": [*ALL_V2, "unused_question_numbers"],
    "all of v4 (+ prose-token confidences)": [*ALL_V2, "unused_question_numbers", "word_sampled_logprob_sum",
                                             "word_sampled_logprob_min", "word_margin_min"],
    "logits only (+ grounding, stepwise)": ["logit_confidence", "step_index", "step_tokens", "is_final", "ungrounded_operands",
                                            "previous_escalated", "escalations"],
}


def labelled_steps(episodes: Sequence[Episode]) -> tuple[list[dict[str, float | None]], list[int]]:
    """Observations and labels (1 = wrong draft) of the draft steps after a correct prefix."""
    observations, labels = [], []
    for episode in episodes:
        for step in reobserve(episode).steps:
            if step.draft_correct is not None:
                observations.append(step.observation)
                labels.append(int(not step.draft_correct))
            kept = step.escalated_correct if step.action else step.draft_correct
            if kept is not True:
                break
    return observations, labels


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a wrong step > score of a right one), ties counting half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return math.nan
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def escalation_at_recall(scores: torch.Tensor, labels: torch.Tensor, recall: float = 0.95) -> float:
    """The fraction of steps escalated by the lowest threshold that still catches ``recall`` of the wrong ones."""
    wrong = scores[labels == 1].sort(descending=True).values
    if not len(wrong):
        return math.nan
    threshold = wrong[max(0, math.ceil(recall * len(wrong)) - 1)]
    return float((scores >= threshold).double().mean())


def _matrix(observations: Sequence[dict[str, float | None]], names: Sequence[str]) -> torch.Tensor:
    return torch.tensor([[math.nan if o.get(n) is None else float(o[n]) for n in names] for o in observations],  # type: ignore[arg-type]
                        dtype=torch.float64)


def fit_scorer(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> torch.nn.Module:
    """A logistic regression on standardised features (a missing value is the mean) with its own normalisation."""
    mean = torch.nanmean(x, 0).nan_to_num(0.0)
    std = torch.sqrt(torch.nanmean((x - mean) ** 2, 0)).nan_to_num(1.0).clamp_min(1e-6)
    model = torch.nn.Linear(x.shape[1], 1, dtype=torch.float64)
    z = ((x - mean) / std).nan_to_num(0.0)
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=steps)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(z).squeeze(1), y.double())
        loss = loss + 1e-4 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)

    class Scorer(torch.nn.Module):
        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return model(((rows - mean) / std).nan_to_num(0.0)).squeeze(1).detach()

    return Scorer()


def signal_table(fit: Sequence[Episode], evaluate: Sequence[Episode], sets: dict[str, list[str]] = SETS) -> list[dict]:
    """One row per feature set: AUROC and escalation @ 95% recall on ``evaluate``, fitted on ``fit``."""
    fit_obs, fit_y = labelled_steps(fit)
    eval_obs, eval_y = labelled_steps(evaluate)
    y_fit, y_eval = torch.tensor(fit_y), torch.tensor(eval_y)
    rows = []
    for label, names in sets.items():
        scorer = fit_scorer(_matrix(fit_obs, names), y_fit)
        scores = scorer(_matrix(eval_obs, names))
        rows.append({"signal": label, "auroc": round(auroc(scores, y_eval), 4),
                     "escalation_at_95_recall": round(escalation_at_recall(scores, y_eval), 4)})
    rows.append({"signal": "oracle", "auroc": 1.0, "escalation_at_95_recall": round(float(y_eval.double().mean()) * 0.95, 4)})
    return [{"steps": len(eval_y), "wrong": int(y_eval.sum()), "fit_steps": len(fit_y)}, *rows]


if __name__ == "__main__":  # the old path of `stepgraph signals`
    from stepgraph.cli import run_old_path
    run_old_path(__spec__.name, "signals")
