"""RADAR: the 2PL fit, adaptive ability estimation, the difficulty regressor, routing, calibration, the artifact."""

from __future__ import annotations

import json
import math

import pytest
import torch
from shipped import shipped_parameters
from stepgraph.training.learning.radar import (
    adaptive_ability,
    calibrate_threshold,
    estimate_ability,
    fit_2pl,
    standardize,
    train_regressor,
)

from stepgraph.errors import ConfigError, PolicyFileError
from stepgraph.routing.radar import (
    Configuration,
    DifficultyRegressor,
    QueryEmbedder,
    RadarManifest,
    RadarRouter,
    p_correct,
)


def simulate(queries: int, configurations: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A response matrix drawn from a 2PL model with known θ ~ N(0, 1), b ~ N(0, 1), a ~ 1.5·LogNormal(0, 0.3)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(configurations, generator=g, dtype=torch.float64)
    b = torch.randn(queries, generator=g, dtype=torch.float64)
    a = 1.5 * (0.3 * torch.randn(queries, generator=g, dtype=torch.float64)).exp()
    y = torch.bernoulli(torch.sigmoid(a[:, None] * (theta[None] - b[:, None])), generator=g)
    return y, theta, b, a


def test_fit_recovers_simulated_parameters() -> None:
    # Tolerance: with 400 queries per configuration θ is well determined (max error 0.5 on the
    # b-standardised scale, correlation ≥ 0.98); with 12 answers per query b is noisier (ρ ≥ 0.8).
    y, theta, b, a = simulate(400, 12)
    fit = fit_2pl(y)
    true_theta, true_b, _ = standardize(theta, b, a)
    assert (fit.theta - true_theta).abs().max() < 0.5
    assert torch.corrcoef(torch.stack([fit.theta, true_theta]))[0, 1] > 0.98
    assert torch.corrcoef(torch.stack([fit.b, true_b]))[0, 1] > 0.8
    assert abs(float(fit.b.mean())) < 1e-6 and abs(float(fit.b.std()) - 1) < 1e-6


def test_fit_refuses_values_other_than_0_and_1() -> None:
    with pytest.raises(ConfigError, match="0 or 1"):
        fit_2pl(torch.tensor([[0.0, 2.0], [1.0, 0.0]]))


def test_adaptive_ability_of_a_new_configuration_lands_near_the_full_fit() -> None:
    # Fit without configuration 0, then estimate its θ from 40 max-information queries only;
    # it must land within 0.5 of the θ it gets when fitted with everything (about 2 standard errors).
    y, *_ = simulate(400, 12, seed=1)
    full = fit_2pl(y)
    rest = fit_2pl(y[:, 1:])
    column = y[:, 0]
    estimate, asked = adaptive_ability(lambda i: float(column[i]), rest.a.tolist(), rest.b.tolist(), budget=40)
    assert len(asked) == len(set(asked)) == 40
    assert abs(estimate - float(full.theta[0])) < 0.5
    # and near the estimate from all 400 of its answers on the same fixed scale
    assert abs(estimate - estimate_ability(column.tolist(), rest.a.tolist(), rest.b.tolist())) < 0.5


def test_adaptive_ability_refuses_a_budget_past_the_queries() -> None:
    with pytest.raises(ConfigError, match="budget"):
        adaptive_ability(lambda i: 1.0, [1.0, 1.0], [0.0, 0.0], budget=3)


def test_difficulty_regressor_trains_and_predicts_finite_values_in_range() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g)
    b = torch.tanh(x[:, :3].sum(1) / 2) * 2 + 0.1 * torch.randn(300, generator=g)
    model, report = train_regressor(x, b)
    assert report["heldout_rmse"] < 0.6 * report["heldout_rmse_mean_only"]
    assert report["heldout_spearman"] > 0.8
    pred = model(torch.randn(50, 16, generator=g)).detach()
    assert torch.isfinite(pred).all() and pred.min() > b.min() - 1 and pred.max() < b.max() + 1


def pool() -> list[Configuration]:
    return [
        Configuration(name="draft", gate="draft", ability=-1.0, mean_flops=1.0),
        Configuration(name="policy", gate="policy", ability=1.0, mean_flops=4.0),
        Configuration(name="target", gate="target", ability=2.0, mean_flops=8.0),
    ]


def manifest(threshold: float = 0.8, **changes: object) -> RadarManifest:
    fields = {"configurations": pool(), "pool": ["draft", "policy", "target"], "discrimination": 2.0,
              "threshold": threshold, "alpha": 0.05, "embedding_tier": 0, "embedding_dim": 4, "regressor_hidden": 8,
              "tiers": [{"name": "draft", "parameters": 10}, {"name": "target", "parameters": 20}]}
    return RadarManifest(**{**fields, **changes})  # type: ignore[arg-type]


def test_routing_picks_the_cheapest_able_configuration() -> None:
    router = RadarRouter(manifest(threshold=0.8))
    assert router.choose(-3.0).configuration.name == "draft"  # easy: the draft alone is able enough
    assert router.choose(0.0).configuration.name == "policy"  # P(draft) = sigmoid(-2) < 0.8 ≤ P(policy) = sigmoid(2)
    assert router.choose(1.8).configuration.name == "target"
    hard = router.choose(5.0)  # nobody clears τ: the most able
    assert hard.configuration.name == "target" and not hard.fallback
    route = router.choose(0.0)
    assert route.difficulty_feature == pytest.approx(1 - p_correct(-1.0, 2.0, 0.0))
    assert 0 <= route.context().difficulty <= 1  # type: ignore[operator]


@pytest.mark.parametrize("difficulty", [None, math.nan, math.inf, -math.inf])
def test_routing_escalates_to_the_strongest_on_missing_or_non_finite_difficulty(difficulty: float | None) -> None:
    route = RadarRouter(manifest()).choose(difficulty)
    assert route.configuration.name == "target" and route.fallback and route.context().difficulty is None


def test_routing_escalates_when_the_embedding_is_not_finite() -> None:
    class NanEmbedder:
        def __call__(self, question: str) -> torch.Tensor:
            return torch.full((4,), math.nan)

    router = RadarRouter(manifest(), DifficultyRegressor(4, 8).eval(), NanEmbedder())  # type: ignore[arg-type]
    assert router.route("Ann has 3 coins.").configuration.name == "target"


def test_configuration_budgets_reach_the_run_context() -> None:
    config = Configuration(name="draft@4", gate="draft", max_steps=4, max_step_tokens=12)
    context = config.context(difficulty=0.25)
    assert (context.max_steps, context.max_step_tokens, context.difficulty) == (4, 12, 0.25)


def test_calibration_meets_coverage_on_a_synthetic_case() -> None:
    # Two configurations (cheap θ = −0.5, strong θ = 2 = "target") and queries of known b: the
    # calibrated τ must keep relative coverage ≥ 1 − α on fresh exchangeable queries, and be cheaper than the strong one.
    alpha, a = 0.1, 1.5
    thetas = {"cheap": -0.5, "target": 2.0}
    flops = {"cheap": 1.0, "target": 10.0}

    def sample(n: int, seed: int) -> tuple[list[float], dict[str, list[dict[str, float]]]]:
        g = torch.Generator().manual_seed(seed)
        b = torch.randn(n, generator=g).tolist()
        rows = {name: [{"correct": float(torch.rand(1, generator=g) < p_correct(t, a, q)), "flops": flops[name]} for q in b]
                for name, t in thetas.items()}
        return b, rows

    def chooser(b: list[float]):
        return lambda tau: ["cheap" if p_correct(thetas["cheap"], a, q) >= tau else "target" for q in b]

    b_cal, rows_cal = sample(300, 0)
    result = calibrate_threshold(chooser(b_cal), rows_cal, rows_cal["target"], alpha)
    assert result["met"] and result["guarantee"]["type"] == "split-conformal"
    b_test, rows_test = sample(5000, 1)
    choices = chooser(b_test)(result["threshold"])
    routed = [rows_test[c][i] for i, c in enumerate(choices)]
    misses = sum(r["correct"] == 0 and t["correct"] == 1 for r, t in zip(routed, rows_test["target"]))
    assert 1 - misses / len(routed) >= 1 - alpha - 0.02
    assert sum(r["flops"] for r in routed) / len(routed) < 9.0


def test_calibration_without_enough_queries_falls_back_to_the_most_able() -> None:
    rows = {"cheap": [{"correct": 0.0, "flops": 1.0}] * 5, "target": [{"correct": 1.0, "flops": 2.0}] * 5}
    result = calibrate_threshold(lambda tau: ["cheap"] * 5, rows, rows["target"], alpha=0.02)
    assert not result["met"] and result["threshold"] > 1 and result["guarantee"]["type"] == "none"


def test_artifact_round_trip_and_refusals(tmp_path) -> None:
    regressor = DifficultyRegressor(4, 8).eval()
    RadarRouter(manifest(threshold=0.7), regressor).save(tmp_path / "ok")
    loaded = RadarRouter.from_path(tmp_path / "ok")
    assert loaded.manifest == manifest(threshold=0.7)
    x = torch.randn(3, 4)
    assert torch.equal(loaded.regressor(x), regressor(x))  # type: ignore[misc]
    assert not list((tmp_path / "ok").glob("*.pkl")) and not list((tmp_path / "ok").glob("*.pt"))

    with pytest.raises(PolicyFileError, match="radar.json"):
        RadarRouter.from_path(tmp_path / "missing")
    (tmp_path / "ok" / "radar.json").write_text("{not json")
    with pytest.raises(PolicyFileError, match="corrupted"):
        RadarRouter.from_path(tmp_path / "ok")
    data = json.loads(manifest().model_dump_json())
    for broken in ({**data, "format": "other"}, {**data, "pool": ["draft", "nope"]}, {**data, "threshold": math.nan}):
        (tmp_path / "ok" / "radar.json").write_text(json.dumps(broken))
        with pytest.raises(PolicyFileError):
            RadarRouter.from_path(tmp_path / "ok")
    (tmp_path / "ok" / "radar.json").write_text(json.dumps(data))
    (tmp_path / "ok" / "difficulty.safetensors").unlink()
    with pytest.raises(PolicyFileError, match="difficulty.safetensors"):
        RadarRouter.from_path(tmp_path / "ok")


def test_artifact_refuses_other_tiers(tmp_path) -> None:
    class Tier:
        def __init__(self, name: str, n_params: int) -> None:
            self.name, self.n_params = name, n_params

    RadarRouter(manifest(), DifficultyRegressor(4, 8)).save(tmp_path)
    with pytest.raises(PolicyFileError, match="tiers"):
        RadarRouter.from_path(tmp_path, tiers=[Tier("draft", 11), Tier("target", 20)])


def test_query_embedding_from_the_shipped_draft_is_its_mean_hidden_state() -> None:
    from stepgraph.models.local import TransformersStepModel
    from stepgraph.testbed import DRAFT_MODEL_DIR

    draft = TransformersStepModel(DRAFT_MODEL_DIR)
    embedder = QueryEmbedder(draft)
    question = "Ann has 12 coins. She gets 7 more. How many coins does she have?"
    vector = embedder(question)
    assert vector.shape == (embedder.dim,) and torch.isfinite(vector).all()
    assert not torch.equal(vector, embedder("Ben has 3 apples. He loses 1. How many apples does he have?"))
    ids = draft.tokenizer.encode(draft.prompt(question, []), add_special_tokens=False)
    hidden = draft.model.hidden_states(ids)  # the LM head reads exactly these states
    assert torch.allclose(torch.nn.functional.linear(hidden, draft.model.lm_head), draft.model.logits(ids))


def test_calibration_finds_thresholds_between_probabilities_near_one() -> None:
    # cheap (P = 0.9975) is always wrong, mid (P = 0.9999) always right: only τ in (0.9975, 0.9999] routes to mid.
    # A 0.01 grid jumps from cheap (τ = 0.99) to the costliest fallback (τ = 1.0); the breakpoints find mid.
    from stepgraph.training.learning.radar import calibrate_router

    configurations = [Configuration(name="cheap", gate="draft", ability=2.0, mean_flops=1.0),
                      Configuration(name="mid", gate="policy", ability=3.1, mean_flops=5.0),
                      Configuration(name="top", gate="target", ability=6.0, mean_flops=10.0)]
    router = RadarRouter(manifest(configurations=configurations, pool=["cheap", "mid", "top"], discrimination=3.0))
    n = 40
    rows = {"cheap": [{"correct": 0.0, "flops": 1.0}] * n, "mid": [{"correct": 1.0, "flops": 5.0}] * n,
            "top": [{"correct": 1.0, "flops": 10.0}] * n}
    calibrated, result = calibrate_router(router, [0.0] * n, rows, rows["top"], alpha=0.1)
    assert result["met"] and calibrated.choose(0.0).configuration.name == "mid"
    assert calibrated.manifest.guarantee["type"] == "split-conformal"


def test_run_gate_gives_each_item_its_difficulty() -> None:
    # RADAR → policy: each query's predicted difficulty reaches the gate's observation
    from scripted import ScriptedModel
    from stepgraph.training.collection.collect import Item
    from stepgraph.training.collection.runs import run_gate

    from stepgraph.routing.gates import AlwaysDraftGate
    from stepgraph.routing.gates.base import GateInput

    seen: list[float | None] = []

    class Recording(AlwaysDraftGate):
        def decide(self, x: GateInput):  # type: ignore[no-untyped-def]
            seen.append(x.observation.get("difficulty"))
            return super().decide(x)

    tiers = [ScriptedModel("d", 10, ["\\boxed{1}"]), ScriptedModel("t", 20, ["\\boxed{1}"])]
    items = [Item("a", "Q1?", "1"), Item("b", "Q2?", "1")]
    rows = run_gate(tiers, Recording(), items, progress=False, difficulties=[0.25, None])
    assert [r["correct"] for r in rows] == [1.0, 1.0] and seen == [0.25, None]


def test_fit_refuses_missing_or_unfinished_response_journals(tmp_path) -> None:
    from stepgraph.training.learning.radar import load_rows

    with pytest.raises(ConfigError, match="radar collect"):
        load_rows(tmp_path, ["draft"], 3)
    (tmp_path / "draft.jsonl").write_text(json.dumps({"run_seed": 0, "correct": 1.0, "flops": 1.0}) + "\n{cut")
    with pytest.raises(ConfigError, match="lacks 2 of 3"):
        load_rows(tmp_path, ["draft"], 3)


def test_radar_cli_lists_its_stages() -> None:
    from stepgraph.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["radar", "fit", "--pool", "all", "--alpha", "0.05"])
    assert (args.stage, args.pool, args.alpha) == ("fit", "all", 0.05)
    with pytest.raises(SystemExit):
        parser.parse_args(["radar", "fit", "--alpha", "1.5"])


def test_configuration_graph_parts_run_a_tier_alone_or_the_policy() -> None:
    from stepgraph.defaults import DEFAULT_POLICY_DIR
    from stepgraph.routing.gates import AlwaysDraftGate, PolicyGate

    draft, target = object(), object()
    tiers, gate = Configuration(name="t", gate="target").graph_parts([draft, target])
    assert tiers == [target, target] and isinstance(gate, AlwaysDraftGate)
    policy = PolicyGate.from_path(DEFAULT_POLICY_DIR)
    tiers, gate = Configuration(name="p", gate="policy", kappa=0.3).graph_parts([draft, target], policy)
    assert tiers == [draft, target] and gate.artifact.kappa == 0.3 and policy.artifact.kappa != 0.3  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="policy="):
        Configuration(name="p", gate="policy").graph_parts([draft, target])


class Tier:
    """A stand-in tier: what graph_parts and the tier checks read (name, parameter count)."""

    def __init__(self, name: str, n_params: int) -> None:
        self.name, self.n_params = name, n_params


def test_mid_configuration_runs_the_mid_model_alone_and_the_policy_on_the_pair() -> None:
    from stepgraph.training.learning.radar import NEW_CONFIGURATIONS, router_tiers, with_tier_sizes

    from stepgraph.defaults import DEFAULT_POLICY_DIR
    from stepgraph.routing.gates import AlwaysDraftGate, PolicyGate

    draft, mid, target = Tier("draft", 10), Tier("mid", 15), Tier("target", 20)
    by_name = {c.name: c for c in with_tier_sizes(NEW_CONFIGURATIONS, [draft, mid, target])}
    assert by_name["mid"].tier_parameters == 15 and by_name["policy@k0.1"].tier_parameters is None
    tiers, gate = by_name["mid"].graph_parts([draft, mid, target])
    assert tiers == [mid, mid] and isinstance(gate, AlwaysDraftGate)
    assert by_name["mid@4steps"].context().max_steps == 4
    # with all three tiers, the other configurations still run the router's pair
    assert Configuration(name="d", gate="draft").graph_parts([draft, mid, target])[0] == [draft, draft]
    assert Configuration(name="t", gate="target").graph_parts([draft, mid, target])[0] == [target, target]
    policy = PolicyGate.from_path(DEFAULT_POLICY_DIR)
    assert Configuration(name="p", gate="policy").graph_parts([draft, mid, target], policy)[0] == [draft, target]
    assert router_tiers([draft, mid, target]) == [draft, target]
    with pytest.raises(ConfigError, match="load_tiers"):  # the pair lacks the mid model
        by_name["mid"].graph_parts([draft, target])
    with pytest.raises(PolicyFileError, match="15 parameters"):  # another model under the same name
        by_name["mid"].graph_parts([draft, Tier("mid", 99), target])
    with pytest.raises(ValueError, match="tier"):
        Configuration(name="x", gate="tier")
    with pytest.raises(ValueError, match="tier"):
        Configuration(name="x", gate="draft", tier="mid")


def test_mid_configuration_finds_the_shipped_mid_model() -> None:
    from stepgraph.training.learning.radar import NEW_CONFIGURATIONS, with_tier_sizes

    from stepgraph.testbed import load_tiers

    tiers = load_tiers(3)
    mid = with_tier_sizes([c for c in NEW_CONFIGURATIONS if c.name == "mid"], tiers)[0]
    assert mid.tier_parameters == shipped_parameters("mid")
    assert mid.graph_parts(tiers)[0] == [tiers[1], tiers[1]]


def test_add_into_pool_recalibrates_and_round_trips_through_the_artifact(tmp_path) -> None:
    from stepgraph.training.collection.runs import run_seed
    from stepgraph.training.learning.radar import add_to_pool

    class Embedder:
        def __call__(self, question: str) -> torch.Tensor:
            return torch.full((4,), float(len(question) % 7))

    n = 30
    accuracy = {"draft": 0.0, "policy": 1.0, "target": 1.0, "mid": 1.0}
    flops = {"draft": 1.0, "policy": 4.0, "target": 8.0, "mid": 2.0}
    for name, right in accuracy.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"run_seed": run_seed(0, i), "correct": right, "flops": flops[name], "usd": 0.0}) + "\n"
            for i in range(n)))

    class LocalTier(Tier):  # what QueryEmbedder accepts (never called here)
        model = tokenizer = prompt = None

    tiers = [LocalTier("draft", 10), LocalTier("target", 20)]
    router = RadarRouter(manifest(), DifficultyRegressor(4, 8).eval(), Embedder())  # type: ignore[arg-type]
    new = Configuration(name="mid", gate="tier", tier="mid", tier_parameters=15, ability=3.0, mean_flops=99.0)
    extended, result = add_to_pool(router, new, tmp_path, n)
    assert result["pool"] == ["draft", "policy", "target", "mid"] and result["guarantee"] == "split-conformal"
    extended.save(tmp_path / "router")
    loaded = RadarRouter.from_path(tmp_path / "router", tiers)  # validates; the pair is still the router's tiers
    assert loaded.manifest == extended.manifest
    three = [tiers[0], LocalTier("mid", 15), tiers[1]]  # load_tiers(3): the ends are checked as the pair
    assert RadarRouter.from_path(tmp_path / "router", three).manifest == extended.manifest
    with pytest.raises(PolicyFileError, match="tiers"):
        RadarRouter.from_path(tmp_path / "router", [LocalTier("draft", 11), LocalTier("mid", 15), tiers[1]])
    mid = {c.name: c for c in loaded.manifest.configurations}["mid"]
    assert (mid.tier, mid.tier_parameters, mid.mean_flops) == ("mid", 15, 2.0)  # cost: the calibration mean
    assert loaded.manifest.threshold <= 1  # τ met: mid is always right on calibration and cheaper than the policy
    assert loaded.choose(0.0).configuration.name == "mid"
    with pytest.raises(ConfigError, match="radar collect"):  # its calibration journal is needed
        add_to_pool(router, new.model_copy(update={"name": "mid2"}), tmp_path, n)


def test_radar_cli_adds_the_mid_model_into_the_pool() -> None:
    from stepgraph.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["radar", "add", "--configuration", "mid", "--into-pool", "--budget", "30"])
    assert (args.configuration, args.into_pool, args.calibration_problems) == ("mid", True, 200)
    assert parser.parse_args(["radar", "fit", "--extra", "mid"]).extra == ["mid"]
    assert parser.parse_args(["radar", "collect", "--configurations", "mid"]).configurations == ["mid"]
    assert parser.parse_args(["radar", "bench", "--extra", "mid"]).extra == ["mid"]
    with pytest.raises(SystemExit):
        parser.parse_args(["radar", "fit", "--extra", "huge"])


def test_each_radar_stage_gets_its_options_as_keyword_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect
    from pathlib import Path

    from stepgraph.training.bench import bench_radar
    from stepgraph.training.learning import radar

    from stepgraph.cli import build_parser

    called: dict[str, dict] = {}
    stages = {"collect": (radar, "collect_command"), "fit": (radar, "fit_command"), "add": (radar, "add_command"),
              "traces": (radar, "traces_command"), "bench": (bench_radar, "bench_command")}
    for stage, (module, name) in stages.items():  # a stand-in that binds the options to the real signature and runs nothing
        signature = inspect.signature(getattr(module, name))
        monkeypatch.setattr(module, name, lambda s=signature, n=stage, **options: called.setdefault(n, s.bind(**options).arguments))
    parser = build_parser()
    for stage in stages:
        args = parser.parse_args(["radar", stage])
        args.func(args)
    assert set(called) == set(stages)
    assert called["collect"]["journal_dir"] == Path("runs/radar/responses") and called["fit"]["pool"] == "hierarchical"
    assert called["bench"]["alpha"] == [0.02, 0.05] and called["add"]["budget"] == 30
