"""RADAR offline: response matrices, the 2PL fit, the difficulty regressor, τ calibration, new configurations.

    stepgraph radar collect --split train --problems 300      # query × configuration → correct, cost
    stepgraph radar collect --split calibration --problems 200
    stepgraph radar fit --out runs/radar                      # 2PL + regressor + τ, writes the artifact
    stepgraph radar add --configuration mid --into-pool       # a new configuration (the mid model): θ from 30 queries, τ recalibrated

Stages, each a small function below:

1. ``collect_responses``: every configuration answers every query of a split, with the run
   seeds of ``training.runs`` (so a configuration's row for a query is what it would answer
   in any later run with the same base seed); one JSONL journal per configuration, resumable.
2. ``fit_2pl``: MAP fit of P(right) = sigmoid(a_q (θ_c − b_q)) with weak priors (θ, b ~ N(0, 2²),
   log a ~ N(0, 0.5²)), then put on the scale where the queries' b have mean 0 and std 1.
3. ``train_regressor``: question embedding (``stepgraph.routing.radar.QueryEmbedder``) → b, on a random
   80% of the training queries; its error is reported on the other 20%.
4. ``calibrate_threshold``: the smallest τ whose misses on the calibration split are within
   split conformal's ⌊α(n + 1)⌋ − 1 (``training.guarantee``), a miss being a wrong answer where
   the strongest tier alone was right (relative coverage, as for the stepwise router).
5. ``adaptive_ability``: a new configuration's θ from a few queries chosen one by one by maximum
   Fisher information a²p(1 − p) at the current estimate, the other parameters fixed.

Why not ``catsim``: it installs without touching torch, but pulls scipy, scikit-learn, numexpr,
json-tricks and joblib, and it does not calibrate item parameters (the 2PL fit needs our own
code anyway); its max-information selector and ability estimator are a few lines each here.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from stepgraph.training.calibration.guarantee import allowed_misses, calibration_guarantee
from stepgraph.training.collection.collect import Item
from stepgraph.training.collection.runs import run_gate, run_seed

from stepgraph.context import RouterContext
from stepgraph.errors import ConfigError
from stepgraph.models.base import DEFAULT_TEMPERATURE, StepModel
from stepgraph.models.costs import Prices
from stepgraph.routing.gates import ConfidenceThresholdGate, PolicyGate
from stepgraph.routing.radar import (
    Configuration,
    DifficultyRegressor,
    QueryEmbedder,
    RadarManifest,
    RadarRouter,
    p_correct,
)
from stepgraph.testbed import task, testbed_task

# The testbed's configurations: each tier alone, each with a 4-step budget, the stepwise policy at three κ.
TESTBED_CONFIGURATIONS = [
    Configuration(name="draft", gate="draft"),
    Configuration(name="draft@4steps", gate="draft", max_steps=4),
    Configuration(name="target@4steps", gate="target", max_steps=4),
    Configuration(name="target", gate="target"),
    Configuration(name="policy", gate="policy"),
    Configuration(name="policy@k0.3", gate="policy", kappa=0.3),
    Configuration(name="policy@k0.6", gate="policy", kappa=0.6),
]
# Configurations added after the fit by `radar add` (adaptive ability estimation), not in any pool's fit.
# The mid model (``load_tiers(3)``'s middle tier) alone, and with the 4-step budget: models outside the router's pair.
NEW_CONFIGURATIONS = [Configuration(name="policy@k0.1", gate="policy", kappa=0.1),
                      Configuration(name="mid", gate="tier", tier="mid"),
                      Configuration(name="mid@4steps", gate="tier", tier="mid", max_steps=4)]
# The shifted split: longer problems than the shipped pair mostly saw. Task v1 (trained on 2-4 operations):
# 3-5 operations; task v2 (1-6 computed steps): the test split's problems with 4-6, a sixth of them.
SHIFTED = task.Difficulty(min_ops=3, max_ops=5)
SHIFTED_MIN_STEPS = 4
SPLIT_SEEDS = {"train": 0, "calibration": 1, "test": 0, "shifted": 2}
PRICES = Prices(0.40, 0.10, 1.60)


def split_problems(split: str, n: int) -> list[Any]:
    """The shipped tiers' task's problems of a split (``testbed_task()``); ``shifted``: the test split's
    longer ones (v1: drawn with ``SHIFTED``; v2: those with at least ``SHIFTED_MIN_STEPS`` computed steps)."""
    tb = testbed_task()
    if split == "shifted" and tb is task:
        return task.generate("test", n, seed=SPLIT_SEEDS[split], difficulty=SHIFTED)
    if split == "shifted":
        drawn, longer = n, list[Any]()
        while len(longer) < n:
            drawn *= 4
            longer = [p for p in tb.generate("test", drawn, seed=SPLIT_SEEDS[split]) if len(p.derived) >= SHIFTED_MIN_STEPS]
        return longer[:n]
    if split in ("train", "calibration", "test"):
        return tb.generate(split, n, seed=SPLIT_SEEDS[split])
    raise ConfigError(f"--split must be train, calibration, test or shifted; got {split!r}.")


def split_items(split: str, n: int) -> list[Item]:
    """Testbed items of a split (``split_problems``)."""
    return [Item(f"{split}:{SPLIT_SEEDS[split]}:{i}", p.question, str(p.answer)) for i, p in enumerate(split_problems(split, n))]


def collect_responses(tiers: Sequence[StepModel], configurations: Sequence[Configuration], items: Sequence[Item],
                      policy: PolicyGate, out: Path, *, seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
                      difficulties: Sequence[float | None] | None = None, progress: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Run every configuration on every item; ``out/<name>.jsonl`` journals each (resumable). Rows in item order."""
    out.mkdir(parents=True, exist_ok=True)
    prices = [PRICES] * 2
    rows: dict[str, list[dict[str, Any]]] = {}
    for config in configurations:
        graph_tiers, gate = config.graph_parts(tiers, policy)
        context = config.context(RouterContext(temperature=temperature))
        rows[config.name] = run_gate(graph_tiers, gate, items, seed=seed, context=context, prices=prices,
                                     desc=config.name, progress=progress, journal=out / f"{config.name}.jsonl",
                                     difficulties=difficulties)
    return rows


def response_matrix(rows: Mapping[str, Sequence[Mapping[str, Any]]], names: Sequence[str]) -> torch.Tensor:
    """``[queries, configurations]`` of 0/1 correctness, configurations in ``names`` order."""
    return torch.tensor([[float(r["correct"]) for r in rows[n]] for n in names], dtype=torch.float64).T


# --- the 2PL fit ------------------------------------------------------------------------------------


@dataclass
class IRTFit:
    """Fitted 2PL parameters on the b-standardised scale."""

    theta: torch.Tensor  # [configurations]
    b: torch.Tensor  # [queries]
    a: torch.Tensor  # [queries]
    log_likelihood: float


def standardize(theta: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same model on the scale where b has mean 0 and std 1 (2PL is invariant to θ, b → sθ + t, sb + t; a → a / s)."""
    t, s = b.mean(), b.std()
    return (theta - t) / s, (b - t) / s, a * s


def fit_2pl(responses: torch.Tensor, mask: torch.Tensor | None = None, *, steps: int = 200, prior_sd: float = 2.0,
            log_a_sd: float = 0.5, theta: torch.Tensor | None = None, seed: int = 0) -> IRTFit:
    """MAP 2PL fit of a ``[queries, configurations]`` 0/1 matrix (``mask``: which cells were observed).

    With ``theta`` given, the abilities stay fixed and only the queries' b and a are fitted (used to
    place new queries on an existing scale).
    """
    y = responses.to(torch.float64)
    m = torch.ones_like(y) if mask is None else mask.to(torch.float64)
    if not torch.isfinite(y[m > 0]).all() or ((y != 0) & (y != 1) & (m > 0)).any():
        raise ConfigError("The response matrix must hold 0 or 1 in every observed cell.")
    n_q, n_c = y.shape
    generator = torch.Generator().manual_seed(seed)
    fixed_theta = theta is not None
    th = (theta.to(torch.float64).clone() if theta is not None else 0.1 * torch.randn(n_c, generator=generator, dtype=torch.float64))
    th.requires_grad_(not fixed_theta)
    # start b from each query's observed error rate: hard queries high
    rate = ((y * m).sum(1) + 0.5) / (m.sum(1) + 1.0)
    b = (-torch.logit(rate)).clone().requires_grad_(True)
    log_a = torch.zeros(n_q, dtype=torch.float64, requires_grad=True)
    params = [b, log_a] + ([] if fixed_theta else [th])
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                  tolerance_change=1e-12)

    def loss_fn() -> torch.Tensor:
        logits = log_a.exp()[:, None] * (th[None, :] - b[:, None])
        nll = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * m).sum()
        prior = (b**2).sum() / (2 * prior_sd**2) + (log_a**2).sum() / (2 * log_a_sd**2)
        if not fixed_theta:
            prior = prior + (th**2).sum() / (2 * prior_sd**2)
        return nll + prior

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        logits = log_a.exp()[:, None] * (th[None, :] - b[:, None])
        ll = -float((torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * m).sum())
        if fixed_theta:
            return IRTFit(th.detach(), b.detach(), log_a.exp().detach(), ll)
        theta_s, b_s, a_s = standardize(th.detach(), b.detach(), log_a.exp().detach())
    return IRTFit(theta_s, b_s, a_s, ll)


def estimate_ability(answers: Sequence[float], a: Sequence[float], b: Sequence[float], prior_sd: float = 2.0) -> float:
    """MAP θ of one configuration from its answers to queries with known (a, b), by Newton steps."""
    y, a_t, b_t = (torch.tensor(list(v), dtype=torch.float64) for v in (answers, a, b))
    theta = 0.0
    for _ in range(50):
        p = torch.sigmoid(a_t * (theta - b_t))
        grad = float((a_t * (y - p)).sum()) - theta / prior_sd**2
        info = float((a_t**2 * p * (1 - p)).sum()) + 1 / prior_sd**2
        step = grad / info
        theta += max(-1.0, min(1.0, step))
        if abs(step) < 1e-8:
            break
    return theta


def adaptive_ability(answer: Callable[[int], float], a: Sequence[float], b: Sequence[float], budget: int = 30,
                     prior_sd: float = 2.0) -> tuple[float, list[int]]:
    """θ of a new configuration from ``budget`` queries, each the one of maximum Fisher information a²p(1 − p).

    Args:
        answer: runs the new configuration on query ``i`` and returns 1.0 if right, else 0.0.
        a, b: the fitted discrimination and difficulty of the candidate queries.
        budget: how many queries to ask.

    Returns:
        The estimate and the queries asked, in order.
    """
    if not 1 <= budget <= len(b):
        raise ConfigError(f"budget must be between 1 and the {len(b)} candidate queries; got {budget}.")
    asked: list[int] = []
    answers: list[float] = []
    theta = 0.0
    for _ in range(budget):
        best, best_info = -1, -1.0
        for i in range(len(b)):
            if i in asked:
                continue
            p = p_correct(theta, a[i], b[i])
            info = a[i] ** 2 * p * (1 - p)
            if info > best_info:
                best, best_info = i, info
        asked.append(best)
        answers.append(answer(best))
        theta = estimate_ability(answers, [a[i] for i in asked], [b[i] for i in asked], prior_sd)
    return theta, asked


# --- the difficulty regressor -----------------------------------------------------------------------


def train_regressor(embeddings: torch.Tensor, difficulty: torch.Tensor, *, hidden: int = 16, steps: int = 150,
                    weight_decays: Sequence[float] = (0.01, 0.1, 1.0, 10.0), holdout: float = 0.2,
                    seed: int = 0) -> tuple[DifficultyRegressor, dict[str, float]]:
    """Fit embedding → b on a random (1 − holdout) share; report the held-out RMSE, the mean-only RMSE and Spearman ρ.

    The fitted b of a query rests on a handful of 0/1 answers, so the targets can be noisy: the
    weight decay is chosen among ``weight_decays`` on an inner 20% of the fitting share, then the
    regressor is refitted on the whole share.
    """
    if embeddings.shape[0] != difficulty.shape[0] or embeddings.shape[0] < 10:
        raise ConfigError(f"The regressor needs one difficulty per embedding and at least 10 queries; got "
                          f"{embeddings.shape[0]} embeddings and {difficulty.shape[0]} difficulties.")
    x, y = embeddings.float(), difficulty.float()
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ConfigError("The regressor's embeddings and difficulties must be finite.")
    fit, held = _shuffled_split(len(y), holdout, seed)
    inner_fit, inner_held = _shuffled_split(len(fit), 0.2, seed + 1)
    scores = {wd: _rmse(_fit_mlp(x[fit][inner_fit], y[fit][inner_fit], hidden, steps, wd, seed), x[fit][inner_held], y[fit][inner_held])
              for wd in weight_decays}
    weight_decay = min(scores, key=lambda wd: scores[wd])
    model = _fit_mlp(x[fit], y[fit], hidden, steps, weight_decay, seed)
    report: dict[str, float] = {"weight_decay": weight_decay, "train_rmse": _rmse(model, x[fit], y[fit]),
                                "fit_queries": len(fit), "heldout_queries": len(held)}
    if len(held):
        with torch.no_grad():
            pred = model(x[held])
        report["heldout_rmse"] = _rmse(model, x[held], y[held])
        report["heldout_rmse_mean_only"] = float(((y[fit].mean() - y[held]) ** 2).mean().sqrt())
        report["heldout_spearman"] = spearman(pred, y[held])
    return model, report


def _shuffled_split(n: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = max(1, int(share * n)) if share > 0 else 0
    return torch.tensor(order[k:], dtype=torch.long), torch.tensor(order[:k], dtype=torch.long)


def _fit_mlp(x: torch.Tensor, y: torch.Tensor, hidden: int, steps: int, weight_decay: float, seed: int) -> DifficultyRegressor:
    torch.manual_seed(seed)
    model = DifficultyRegressor(x.shape[1], hidden)
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model.eval()


def _rmse(model: DifficultyRegressor, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(x) - y) ** 2).mean().sqrt())


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx, ry = x.argsort().argsort().double(), y.argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / ((rx**2).sum().sqrt() * (ry**2).sum().sqrt()).clamp_min(1e-12))


# --- threshold calibration --------------------------------------------------------------------------


def route_rows(choices: Sequence[str], rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The rows RADAR's choices give: query i's row of the configuration chosen for it."""
    return [dict(rows[name][i], configuration=name) for i, name in enumerate(choices)]


def calibrate_threshold(choose: Callable[[float], list[str]], rows: Mapping[str, Sequence[Mapping[str, Any]]],
                        target: Sequence[Mapping[str, Any]], alpha: float, grid: Sequence[float] | None = None) -> dict[str, Any]:
    """The smallest τ whose misses meet split conformal's bound; τ > 1 (always the fallback) when none does.

    Args:
        choose: τ → the configuration chosen for each calibration query.
        rows: per configuration, its rows on the calibration queries (``correct``, ``flops``).
        target: the strongest tier alone on the same queries and seeds.
        alpha: allowed miss rate.
        grid: candidate τ (default 0.00, 0.01, ..., 1.00).
    """
    n = len(target)
    allowed = allowed_misses(alpha, n)
    trials = []
    for tau in grid if grid is not None else [i / 100 for i in range(101)]:
        routed = route_rows(choose(tau), rows)
        misses = sum(1 for r, t in zip(routed, target) if r["correct"] == 0 and t["correct"] == 1)
        trials.append({"threshold": tau, "misses": misses, "coverage": 1 - misses / n,
                       "flops": sum(r["flops"] for r in routed) / n})
    feasible = [t for t in trials if t["misses"] <= allowed] if allowed >= 0 else []
    chosen = min(feasible, key=lambda t: (t["flops"], t["threshold"])) if feasible else None
    guarantee = calibration_guarantee(alpha, n)  # split conformal, or too few queries (with how many α needs)
    if chosen is None and guarantee["type"] != "none":
        fewest = min(t["misses"] for t in trials)
        guarantee = {"type": "none", "calibration_episodes": n,
                     "reason": f"no τ keeps the misses within {allowed} of {n} calibration queries (the fewest is {fewest}, "
                               f"sending queries to the pool's most able configurations): the pool cannot reach coverage "
                               f"{1 - alpha:g}. The router sends every query to its most able configuration; add a stronger "
                               "configuration to the pool or raise --alpha."}
    return {"threshold": chosen["threshold"] if chosen else 1.000001, "allowed_misses": allowed, "trials": trials,
            "guarantee": guarantee, "met": chosen is not None}


def load_rows(directory: Path, names: Sequence[str], n: int, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The journalled rows of each configuration on the first ``n`` items with base seed ``seed``, in item order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        path = directory / f"{name}.jsonl"
        if not path.is_file():
            raise ConfigError(f"{path} is missing: run `stepgraph radar collect` for this split first.")
        by_seed = {}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            by_seed[row["run_seed"]] = row
        missing = [i for i in range(n) if run_seed(seed, i) not in by_seed]
        if missing:
            raise ConfigError(f"{path} lacks {len(missing)} of {n} queries of seed {seed} (first: #{missing[0]}); "
                              f"finish `stepgraph radar collect --seed {seed}`.")
        out[name] = [by_seed[run_seed(seed, i)] for i in range(n)]
    return out


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# --- fitting the artifact ---------------------------------------------------------------------------

POOLS = {
    "query": ["draft", "draft@4steps", "target@4steps", "target"],  # tiers alone and budgets: query-level RADAR
    "hierarchical": ["draft", "draft@4steps", "policy"],  # cheap configurations or the stepwise router
    "all": [c.name for c in TESTBED_CONFIGURATIONS],
}
ITEMS_FILE = "items.safetensors"


def embed(embedder: QueryEmbedder, items: Sequence[Item]) -> torch.Tensor:
    return torch.stack([embedder(item.question) for item in items])


@dataclass
class RadarFit:
    """Everything ``fit_radar`` learns: the 2PL fit, configurations with abilities and costs, the regressor."""

    irt: IRTFit
    configurations: list[Configuration]
    regressor: DifficultyRegressor
    report: dict[str, Any]


def fit_radar(train_rows: Mapping[str, Sequence[Mapping[str, Any]]], train_embeddings: torch.Tensor,
              configurations: Sequence[Configuration], *, seed: int = 0) -> RadarFit:
    """2PL on the train response matrix; abilities and mean costs into the configurations; the regressor on b."""
    names = [c.name for c in configurations]
    irt = fit_2pl(response_matrix(train_rows, names), seed=seed)
    fitted = [c.model_copy(update={"ability": float(irt.theta[i]), "mean_flops": mean([r["flops"] for r in train_rows[c.name]]),
                                   "mean_usd": mean([r["usd"] for r in train_rows[c.name]])}) for i, c in enumerate(configurations)]
    _, heldout = train_regressor(train_embeddings, irt.b, seed=seed)  # the 80/20 split reports the error...
    regressor, _ = train_regressor(train_embeddings, irt.b, seed=seed, holdout=0)  # ...the artifact learns from all
    report = {"train_queries": len(irt.b), "log_likelihood": irt.log_likelihood, "median_discrimination": float(irt.a.median()),
              "regressor": heldout, "abilities": {c.name: round(c.ability or 0.0, 4) for c in fitted}}
    return RadarFit(irt, fitted, regressor, report)


def make_router(fit: RadarFit, pool: Sequence[str], *, threshold: float = 1.000001, alpha: float = 0.02,
                tiers: Sequence[Mapping[str, Any]] = (), embedder: QueryEmbedder | None = None) -> RadarRouter:
    manifest = RadarManifest(configurations=fit.configurations, pool=list(pool), discrimination=float(fit.irt.a.median()),
                             threshold=threshold, alpha=alpha, embedding_tier=0, embedding_dim=fit.regressor.dim,
                             regressor_hidden=fit.regressor.hidden, tiers=[dict(t) for t in tiers], training=fit.report)
    return RadarRouter(manifest, fit.regressor, embedder)


def predicted_difficulties(router: RadarRouter, embeddings: torch.Tensor) -> list[float]:
    with torch.no_grad():
        return [float(v) for v in router.regressor(embeddings)]  # type: ignore[misc]


def calibrate_router(router: RadarRouter, difficulties: Sequence[float], rows: Mapping[str, Sequence[Mapping[str, Any]]],
                     target: Sequence[Mapping[str, Any]], alpha: float) -> tuple[RadarRouter, dict[str, Any]]:
    """τ for relative coverage ≥ 1 − α on the calibration queries; the router with it and the guarantee recorded."""
    # every predicted probability is a breakpoint where a choice changes: a fixed 0.01 grid is too coarse near 1
    points = sorted({p for b in difficulties for p in router.probabilities(b).values() if math.isfinite(p)} | {0.0})
    if len(points) > 400:  # evenly spaced in rank, ends kept
        points = [points[round(i * (len(points) - 1) / 399)] for i in range(400)]
    result = calibrate_threshold(lambda tau: [router.choose(b, tau).configuration.name for b in difficulties], rows, target, alpha,
                                 grid=points)
    manifest = router.manifest.model_copy(update={"threshold": result["threshold"], "alpha": alpha, "guarantee": result["guarantee"]})
    return RadarRouter(manifest, router.regressor, router.embedder), result


def save_items(directory: Path, fit: IRTFit, ids: Sequence[str]) -> None:
    """The training queries' fitted a and b (``radar add`` places a new configuration on their scale)."""
    save_file({"a": fit.a.float().contiguous(), "b": fit.b.float().contiguous()}, str(directory / ITEMS_FILE),
              metadata={"ids": json.dumps(list(ids))})


# --- the stages of `stepgraph radar collect|fit|add|traces` (stepgraph.cli.radar) ---------------------


def _load(policy: Path | None, configurations: Sequence[Configuration] = ()) -> tuple[list[StepModel], PolicyGate]:
    """The testbed tiers (the pair, or all three when a configuration runs the mid model) and the stepwise policy."""
    from stepgraph.defaults import DEFAULT_POLICY_DIR
    from stepgraph.testbed import load_tiers

    tiers = load_tiers(3 if any(c.gate == "tier" for c in configurations) else 2)
    return tiers, PolicyGate.from_path(policy or DEFAULT_POLICY_DIR)


def with_tier_sizes(configurations: Sequence[Configuration], tiers: Sequence[StepModel]) -> list[Configuration]:
    """``tier`` configurations with their model's parameter count recorded (checked whenever they run again)."""
    sizes = {m.name: m.n_params for m in tiers}
    return [c.model_copy(update={"tier_parameters": sizes.get(c.tier or "")}) if c.gate == "tier" else c for c in configurations]


def router_tiers(tiers: Sequence[StepModel]) -> list[StepModel]:
    """The router's own pair (what its tier record, its embedder and the stepwise configurations use): first and last."""
    return [tiers[0], tiers[-1]]


def collect_command(*, split: str, problems: int, journal_dir: Path, configurations: Sequence[str] | None = None,
                    policy: Path | None = None, temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> dict[str, Any]:
    """``radar collect``: the chosen configurations (default: the testbed's) on ``problems`` queries of ``split``."""
    torch.set_num_threads(1)
    names = configurations or [c.name for c in TESTBED_CONFIGURATIONS]
    chosen = [c for c in TESTBED_CONFIGURATIONS + NEW_CONFIGURATIONS if c.name in names]
    tiers, gate = _load(policy, chosen)
    items = split_items(split, problems)
    rows = collect_responses(tiers, chosen, items, gate, journal_dir / split, seed=seed, temperature=temperature)
    return {"split": split, "queries": len(items), "dir": str(journal_dir / split),
            "accuracy": {name: round(mean([r["correct"] for r in r_]), 4) for name, r_ in rows.items()},
            "mean_mflops": {name: round(mean([r["flops"] for r in r_]) / 1e6, 3) for name, r_ in rows.items()}}


def fit_command(*, responses: Path, train_problems: int, calibration_problems: int, pool: str, alpha: float, out: Path,
                extra: Sequence[str] | None = None, policy: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """``radar fit``: the 2PL model, the difficulty regressor and τ at ``alpha`` from ``radar collect``'s journals."""
    from stepgraph.training.calibration.calibrate import describe

    torch.set_num_threads(1)
    added = [c for c in NEW_CONFIGURATIONS if c.name in (extra or [])]
    all_tiers, _ = _load(policy, added)
    tiers = router_tiers(all_tiers)
    configurations = with_tier_sizes([c for c in TESTBED_CONFIGURATIONS if c.name in set(POOLS["all"])] + added, all_tiers)
    names = [c.name for c in configurations]
    train, calibration = split_items("train", train_problems), split_items("calibration", calibration_problems)
    train_rows = load_rows(responses / "train", names, len(train))
    calibration_rows = load_rows(responses / "calibration", names, len(calibration))
    embedder = QueryEmbedder(tiers[0])
    fit = fit_radar(train_rows, embed(embedder, train), configurations, seed=seed)
    router = make_router(fit, [*POOLS[pool], *(c.name for c in added)], alpha=alpha, tiers=describe(tiers), embedder=embedder)
    b_calibration = predicted_difficulties(router, embed(embedder, calibration))
    # the regressor's error on queries it never saw, against their b fitted on the training scale (θ fixed)
    placed = fit_2pl(response_matrix(calibration_rows, names), theta=fit.irt.theta)
    error = float(((torch.tensor(b_calibration, dtype=torch.float64) - placed.b) ** 2).mean().sqrt())
    router, result = calibrate_router(router, b_calibration, calibration_rows, calibration_rows["target"], alpha)
    router.manifest.training["calibration_rmse_vs_fixed_theta_fit"] = round(error, 4)
    router.manifest.training["calibration_rmse_mean_only"] = round(float(((placed.b - fit.irt.b.mean()) ** 2).mean().sqrt()), 4)
    router.save(out)
    save_items(out, fit.irt, [item.problem_id for item in train])
    return {"out": str(out), "pool": router.manifest.pool, "threshold": router.manifest.threshold, "guarantee": result["guarantee"]["type"],
            "abilities": fit.report["abilities"], "mean_mflops": {c.name: round((c.mean_flops or 0) / 1e6, 3) for c in fit.configurations},
            "regressor": fit.report["regressor"], "calibration_rmse": router.manifest.training["calibration_rmse_vs_fixed_theta_fit"],
            "calibration_rmse_mean_only": router.manifest.training["calibration_rmse_mean_only"]}


def answer_one(tiers: Sequence[StepModel], config: Configuration, policy: PolicyGate, temperature: float = DEFAULT_TEMPERATURE,
               ) -> Callable[[Item, int], dict[str, Any]]:
    """Run ``config`` on one item with item ``index``'s run seed: the correctness and cost ``collect_responses`` records."""
    from stepgraph.answers import is_correct
    from stepgraph.graph import build_graph

    graph = build_graph(*config.graph_parts(tiers, policy), prices=[PRICES] * 2)
    context = config.context(RouterContext(temperature=temperature))

    def run(item: Item, index: int) -> dict[str, Any]:
        state = graph.invoke({"question": item.question}, context=RouterContext(**{**vars(context), "seed": run_seed(0, index)}))
        return {"correct": float(is_correct(state["answer"], item.reference)), "flops": state["totals"]["flops"],
                "usd": state["totals"]["usd"]}

    return run


def add_command(*, router: Path, configuration: str, budget: int, into_pool: bool = False,
                responses: Path = Path("runs/radar/responses"), calibration_problems: int = 200, out: Path | None = None,
                policy: Path | None = None) -> dict[str, Any]:
    """``radar add``: ``configuration``'s ability from ``budget`` max-information queries, written beside ``router``'s
    (over it unless ``out``); ``into_pool`` also routes to it, τ recalibrated on the calibration journals."""
    from safetensors import safe_open

    torch.set_num_threads(1)
    config = next(c for c in NEW_CONFIGURATIONS + TESTBED_CONFIGURATIONS if c.name == configuration)
    all_tiers, gate = _load(policy, [config])
    config = with_tier_sizes([config], all_tiers)[0]
    fitted = RadarRouter.from_path(router, router_tiers(all_tiers))  # the pair it was fitted on, or refused
    if config.name in {c.name for c in fitted.manifest.configurations}:
        raise ConfigError(f"{router} already has a configuration named {config.name!r}.")
    with safe_open(str(router / ITEMS_FILE), "pt") as f:
        a, b = f.get_tensor("a").tolist(), f.get_tensor("b").tolist()
        ids = json.loads(f.metadata()["ids"])
    items = split_items("train", len(ids))
    run = answer_one(all_tiers, config, gate)
    rows: list[dict[str, Any]] = []

    def answer(i: int) -> float:
        rows.append(run(items[i], i))
        return rows[-1]["correct"]

    theta, asked = adaptive_ability(answer, a, b, budget=budget)
    added = config.model_copy(update={"ability": theta, "mean_flops": mean([r["flops"] for r in rows]),
                                      "mean_usd": mean([r["usd"] for r in rows])})
    result = {"configuration": config.name, "ability": round(theta, 4), "queries": len(asked),
              "accuracy_on_asked": mean([r["correct"] for r in rows]), "mean_mflops_on_asked": round((added.mean_flops or 0) / 1e6, 3),
              "out": str(out or router)}
    if into_pool:
        fitted, calibration = add_to_pool(fitted, added, responses / "calibration", calibration_problems)
        result.update(calibration)
    else:
        manifest = fitted.manifest.model_copy(update={"configurations": [*fitted.manifest.configurations, added]})
        fitted = RadarRouter(manifest, fitted.regressor, fitted.embedder)
        result["note"] = "the cost is the mean over the asked (most informative) queries; --into-pool also routes to it"
    fitted.save(out or router)
    if out:  # the extended artifact can take further `radar add`s
        import shutil

        shutil.copyfile(router / ITEMS_FILE, out / ITEMS_FILE)
    return result


def add_to_pool(router: RadarRouter, added: Configuration, calibration_dir: Path, n: int) -> tuple[RadarRouter, dict[str, Any]]:
    """``router`` with ``added`` among its configurations and in its pool, τ recalibrated on the calibration journals.

    A new pool changes every choice, so the old τ carries no guarantee: τ is recalibrated like ``radar fit`` does,
    and the new configuration's cost becomes its calibration mean (the asked queries are the most
    informative, not typical ones). Needs ``radar collect --split calibration`` of the new configuration.
    """
    if router.embedder is None:
        raise ConfigError("Adding a configuration to the pool recalibrates τ: load the router with its tiers (an embedder).")
    items = split_items("calibration", n)
    names = sorted({*router.manifest.pool, added.name, "target"})
    rows = load_rows(calibration_dir, names, n)
    added = added.model_copy(update={"mean_flops": mean([r["flops"] for r in rows[added.name]]),
                                     "mean_usd": mean([r["usd"] for r in rows[added.name]])})
    manifest = router.manifest.model_copy(update={"configurations": [*router.manifest.configurations, added],
                                                  "pool": [*router.manifest.pool, added.name]})
    extended = RadarRouter(RadarManifest.model_validate(manifest.model_dump()), router.regressor, router.embedder)
    difficulties = predicted_difficulties(extended, embed(router.embedder, items))
    extended, result = calibrate_router(extended, difficulties, rows, rows["target"], router.manifest.alpha)
    return extended, {"pool": extended.manifest.pool, "threshold": extended.manifest.threshold,
                      "guarantee": result["guarantee"]["type"], "calibration_mean_mflops": round((added.mean_flops or 0) / 1e6, 3)}


def traces_command(*, router: Path, split: str, problems: int, store: Path, policy: Path | None = None) -> dict[str, Any]:
    """Behaviour traces whose every step carries RADAR's difficulty feature, for a policy trained with it."""
    from stepgraph.training.collection.collect import collect_episode
    from stepgraph.training.collection.verifiers import TestbedVerifier
    from stepgraph.training.data.store import TraceStore, redact
    from tqdm import tqdm

    from stepgraph.routing.gates import ExploringGate

    torch.set_num_threads(1)
    tiers, _ = _load(policy)
    fitted = RadarRouter.from_path(router, tiers)
    items = split_items(split, problems)
    verifier = TestbedVerifier(split_problems(split, problems))
    with TraceStore(store) as traces:
        done = traces.problem_ids()
        traces.set_meta("models", [{"name": m.name, "parameters": m.n_params} for m in tiers])
        for i, item in enumerate(tqdm(items, desc=f"traces {split}")):
            if item.problem_id in done:
                continue
            difficulty = fitted.route(item.question).difficulty_feature
            behaviour = ExploringGate(ConfidenceThresholdGate(0.9), epsilon=0.3, seed=run_seed(0, i))
            episode = collect_episode(tiers, behaviour, verifier, item, seed=run_seed(0, i),
                                      context=RouterContext(temperature=DEFAULT_TEMPERATURE, difficulty=difficulty))
            traces.add(episode, split)
        total = len(traces)
    return {"store": redact(store), "split": split, "episodes": total}
