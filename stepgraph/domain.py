"""The out-of-domain signal: is a question like the ones the router was calibrated on?

A router's calibration (κ, coverage 1 − α) holds for questions like its calibration questions.
On a question far from them every tier may be wrong, the gate escalates most steps, and each
step pays for a draft and for the strong tier: more than the strong tier alone. The signal is
one number per question, the mean log-likelihood of the question's tokens under one tier
(``QuestionScore.mean_logprob``, from the backend's ``question_logprob``), compared with a low
percentile of the calibration questions' values. ``stepgraph calibrate`` (and ``train``) store
that threshold in the policy artifact as its ``domain`` field; an artifact without one has the
signal off.

At run time the graph scores each new question once, before the first draft, and sets
``in_domain`` in the state: True, False, or None when unknown (no ``domain`` in the gate's
artifact, a backend that cannot score, or a failure, whose reason is logged on the
``stepgraph.domain`` logger: the signal never stops a run). A question out of the domain is
written by the strongest tier from its first step: no draft is paid for.

Which tier scores: the strongest by default. Measured on the shipped testbed tiers (trained with
the loss on the answers only, so question text is never modelled), the draft finds hand-written
off-template questions *more* likely than its own domain's and cannot tell them apart; the target
flags 29 of 30 at the 1st percentile, and a real pretrained model reads unusual text as unlikely.
A local draft's score would cost nothing extra (its prompt keys/values are reused by its first
step); the strong tier's costs one prefill of the prompt, reported in ``prefill_flops``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict

from stepgraph.models.base import QuestionScore, StepModel

STATISTIC: Literal["mean_question_logprob"] = "mean_question_logprob"
DEFAULT_PERCENTILE = 1.0
"""Questions scoring below the calibration questions' 1st percentile are out of the domain: about 1 in 100 of the
calibration distribution's questions is flagged, and sent to the strongest tier (which costs, never misses)."""

logger = logging.getLogger("stepgraph.domain")


class Domain(BaseModel):
    """The ``domain`` field of a policy manifest: which tier scores a question and the threshold below which it is out of the domain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: Annotated[int, Strict(), Field(ge=0)]
    """the tier whose model scores the question, by index, cheapest first"""
    statistic: Literal["mean_question_logprob"] = STATISTIC
    """what is compared: the mean log-likelihood of the question's tokens"""
    threshold: Annotated[float, Field(allow_inf_nan=False)]
    """a question scoring below it is out of the domain"""
    percentile: Annotated[float, Field(gt=0, lt=100)] = DEFAULT_PERCENTILE
    """the percentile of the calibration questions' scores that ``threshold`` is"""
    questions: Annotated[int, Field(ge=1)]
    """how many calibration questions it was computed on"""


def score_question(model: StepModel, question: str) -> QuestionScore | None:
    """``model.question_logprob(question)``, or None (with the reason logged) when the backend cannot say or fails."""
    method = getattr(model, "question_logprob", None)
    if method is None:
        logger.info("in_domain unknown: %s has no question_logprob (its backend cannot score a question).", model.name)
        return None
    try:
        score = method(question)
    except Exception as exc:  # noqa: BLE001 -- the signal is advice: a failure leaves it unknown, never stops the run
        logger.warning("in_domain unknown: %s failed to score the question: %s: %s", model.name, type(exc).__name__, exc)
        return None
    if score is None:
        logger.info("in_domain unknown: %s did not report the question's log-likelihood.", model.name)
        return None
    if not isinstance(score, QuestionScore) or not math.isfinite(score.mean_logprob):
        logger.warning("in_domain unknown: %s.question_logprob returned %r, not a QuestionScore with a finite mean.", model.name, score)
        return None
    return score


def min_questions(percentile: float) -> int:
    """The fewest questions whose ``percentile`` lies above their lowest score: below it, the lowest calibration
    question itself would be flagged."""
    return math.ceil(100.0 / percentile - 1e-9)


def fit_domain(model: StepModel, tier: int, questions: Sequence[str], percentile: float = DEFAULT_PERCENTILE) -> Domain | None:
    """The domain of ``questions``: their scores' ``percentile`` under ``model`` (tier ``tier``); None if it scores none of them."""
    scores = [s.mean_logprob for q in dict.fromkeys(questions) if (s := score_question(model, q)) is not None]
    if not scores:
        return None
    return Domain(tier=tier, threshold=float(np.percentile(scores, percentile)), percentile=percentile, questions=len(scores))


def tier_index(tier: int, n_tiers: int) -> int:
    """A tier given as an index, negative counting from the strongest (-1), as a non-negative index."""
    if not -n_tiers <= tier < n_tiers:
        raise ValueError(f"tier {tier} is outside the {n_tiers} tiers")
    return tier % n_tiers
