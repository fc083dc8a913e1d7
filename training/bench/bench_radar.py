"""RADAR's bench rows: query-level routing, the stepwise policy, RADAR → policy, and the policy with the difficulty feature.

    stepgraph radar bench --out runs/radar/bench

Every row answers the same test (and shifted) queries with the same run seeds. A configuration's
rows come from its ``radar collect`` journal, and a RADAR router's row for a query *is* the row of
the configuration it chose (the same run seed gives the same run), so routers cost no extra model
calls. The two policies trained on RADAR's difficulty traces (one with the feature, one with it
hidden) are run live with each query's difficulty in its context. Coverage is relative to the
strongest tier alone on the same query and seed; intervals are bootstrap 95% over queries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from stepgraph.training.bench.bench import bootstrap
from stepgraph.training.collection.runs import add_coverage, run_gate
from stepgraph.training.learning.radar import (
    NEW_CONFIGURATIONS,
    POOLS,
    PRICES,
    TESTBED_CONFIGURATIONS,
    adaptive_ability,
    calibrate_router,
    embed,
    fit_radar,
    load_rows,
    make_router,
    predicted_difficulties,
    route_rows,
    split_items,
)

from stepgraph.context import RouterContext
from stepgraph.models.base import DEFAULT_TEMPERATURE
from stepgraph.routing.gates import PolicyGate
from stepgraph.routing.radar import Configuration, QueryEmbedder, RadarRouter

ROUTERS = {"query": "RADAR (query-level: tiers alone, budgets)", "hierarchical": "RADAR → stepwise policy",
           "all": "RADAR over all configurations"}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in ("correct", "covered", "flops", "usd"):
        m, low, high = bootstrap([float(r[metric]) for r in rows])
        out[metric] = {"mean": m, "low": low, "high": high}
    if "configuration" in rows[0]:
        out["mix"] = dict(Counter(r["configuration"] for r in rows).most_common())
    return out


def run_bench(tiers: Sequence[Any], policy: PolicyGate, *, responses: Path, sizes: Mapping[str, int], alphas: Sequence[float],
              difficulty_policy: PolicyGate | None, plain_policy: PolicyGate | None, eval_splits: Sequence[str] = ("test", "shifted"),
              adaptive_budget: int = 30, regressor: Any = None, seeds: Sequence[int] = (0,),
              extra: Sequence[str] = (), added_ability: str = "adaptive") -> dict[str, Any]:
    """Fit on train, calibrate every router on calibration, evaluate every row on ``eval_splits``.

    ``regressor`` (default: refitted) is the difficulty regressor of the artifact the difficulty traces were collected with.
    ``extra`` names configurations of ``NEW_CONFIGURATIONS`` (e.g. ``mid``) added after the fit, as ``radar add
    --into-pool`` does: ability from ``adaptive_budget`` max-information train queries, τ recalibrated; each gives
    the query-level and all-configurations routers a "+ NAME" row. ``added_ability="full"`` uses the ability of a
    full refit with all its train answers instead (to see what the adaptive estimate's error costs).
    """
    configurations = list(TESTBED_CONFIGURATIONS)
    names = [c.name for c in configurations]
    added_names = [c.name for c in NEW_CONFIGURATIONS if c.name in extra]
    items = {split: split_items(split, n) for split, n in sizes.items()}
    rows = {split: load_rows(responses / split, names + added_names, len(items[split])) for split in items}
    embedder = QueryEmbedder(tiers[0])
    embeddings = {split: embed(embedder, split_items_) for split, split_items_ in items.items()}
    fit = fit_radar(rows["train"], embeddings["train"], configurations)
    if regressor is not None:
        fit.regressor = regressor
    base = make_router(fit, POOLS["all"])
    difficulty = {split: predicted_difficulties(base, embeddings[split]) for split in items}
    report: dict[str, Any] = {"alphas": list(alphas), "seeds": list(seeds), "sizes": dict(sizes), "fit": fit.report, "routers": {}, "splits": {}}

    routers: dict[str, RadarRouter] = {}
    for alpha in alphas:
        for pool, label in ROUTERS.items():
            router, result = calibrate_router(make_router(fit, POOLS[pool], alpha=alpha), difficulty["calibration"],
                                              rows["calibration"], rows["calibration"]["target"], alpha)
            routers[f"{label}, α = {alpha}"] = router
            report["routers"][f"{pool}@{alpha}"] = {"threshold": result["threshold"], "met": result["met"],
                                                    "guarantee": result["guarantee"]["type"]}
    if added_names:
        from stepgraph.training.learning.radar import fit_2pl, response_matrix

        added_configs = []
        report["added"] = {}
        for config in (c for c in NEW_CONFIGURATIONS if c.name in added_names):
            train = rows["train"][config.name]
            theta, asked = adaptive_ability(lambda i: float(train[i]["correct"]), fit.irt.a.tolist(), fit.irt.b.tolist(),  # noqa: B023
                                            budget=adaptive_budget)
            refit = fit_2pl(response_matrix(rows["train"], [*names, config.name]))
            ability = theta if added_ability == "adaptive" else float(refit.theta[-1])
            added_configs.append(config.model_copy(update={"ability": ability, "mean_flops": sum(r["flops"] for r in train) / len(train),
                                                   "mean_usd": sum(r["usd"] for r in train) / len(train)}))
            report["added"][config.name] = {"adaptive_ability": theta, "queries": len(asked), "full_fit_ability": float(refit.theta[-1]),
                                            "train_accuracy": sum(r["correct"] for r in train) / len(train)}
        fit_added = type(fit)(fit.irt, [*fit.configurations, *added_configs], fit.regressor, fit.report)
        plus = " + " + ", ".join(added_names) + ("" if added_ability == "adaptive" else " (full-fit θ)")
        for alpha in alphas:
            for pool in ("query", "all"):
                router, result = calibrate_router(make_router(fit_added, [*POOLS[pool], *added_names], alpha=alpha),
                                                  difficulty["calibration"], rows["calibration"], rows["calibration"]["target"], alpha)
                routers[f"{ROUTERS[pool]}{plus}, α = {alpha}"] = router
                report["routers"][f"{pool}{plus}@{alpha}"] = {"threshold": result["threshold"], "met": result["met"],
                                                             "guarantee": result["guarantee"]["type"]}

    # the new configuration, added by adaptive ability estimation (part 4), checked against a full refit
    new = NEW_CONFIGURATIONS[0]
    if (responses / "train" / f"{new.name}.jsonl").is_file():
        from stepgraph.training.learning.radar import fit_2pl, response_matrix

        new_rows = load_rows(responses / "train", [new.name], len(items["train"]))[new.name]
        estimate, asked = adaptive_ability(lambda i: float(new_rows[i]["correct"]), fit.irt.a.tolist(), fit.irt.b.tolist(),
                                           budget=adaptive_budget)
        refit = fit_2pl(response_matrix({**rows["train"], new.name: new_rows}, [*names, new.name]))
        report["new_configuration"] = {"name": new.name, "adaptive_ability": estimate, "queries": len(asked),
                                       "full_fit_ability": float(refit.theta[-1]), "train_accuracy": sum(r["correct"] for r in new_rows) / len(new_rows)}

    live: dict[str, dict[str, PolicyGate]] = {}
    if difficulty_policy is not None:
        live["policy + difficulty feature"] = {"gate": difficulty_policy}
    if plain_policy is not None:
        live["policy retrained, difficulty hidden"] = {"gate": plain_policy}
    hierarchical_d: dict[float, RadarRouter] = {}
    if difficulty_policy is not None:  # RADAR → the difficulty policy: the policy joins the pool as a new configuration
        config = Configuration(name="policy+difficulty", gate="policy")
        feature = [base.choose(b).difficulty_feature for b in difficulty["train"]]
        cache: dict[int, dict[str, Any]] = {}

        def answer(i: int) -> float:
            cache[i] = run_with_difficulty(tiers, difficulty_policy, items["train"][i], i, feature[i])
            return cache[i]["correct"]

        theta, _ = adaptive_ability(answer, fit.irt.a.tolist(), fit.irt.b.tolist(), budget=adaptive_budget)
        cal = live_rows(tiers, difficulty_policy, items["calibration"], [base.choose(b).difficulty_feature for b in difficulty["calibration"]])
        added = config.model_copy(update={"ability": theta, "mean_flops": sum(r["flops"] for r in cal) / len(cal),
                                          "mean_usd": sum(r["usd"] for r in cal) / len(cal)})
        fit_d = type(fit)(fit.irt, [*fit.configurations, added], fit.regressor, fit.report)
        for alpha in alphas:
            hierarchical_d[alpha], result = calibrate_router(make_router(fit_d, ["draft", "draft@4steps", added.name], alpha=alpha),
                                                             difficulty["calibration"], {**rows["calibration"], added.name: cal},
                                                             rows["calibration"]["target"], alpha)
            report["routers"][f"hierarchical+difficulty@{alpha}"] = {"threshold": result["threshold"], "met": result["met"],
                                                                     "guarantee": result["guarantee"]["type"], "ability": theta}

    for split in eval_splits:
        by_method: dict[str, list[dict[str, Any]]] = {}
        features = [base.choose(b).difficulty_feature for b in difficulty[split]]
        for seed in seeds:  # the same queries under each sampling seed; routers choose per query, the seed only resamples
            split_rows = rows[split] if seed == 0 else load_rows(responses / split, names + added_names, len(items[split]), seed)
            target = split_rows["target"]
            found: dict[str, list[dict[str, Any]]] = {}
            for name in ("target", "draft", "draft@4steps", "target@4steps", "policy", "policy@k0.3", "policy@k0.6", *added_names):
                found[name] = [dict(r) for r in split_rows[name]]
            for label, router in routers.items():
                found[label] = route_rows([router.choose(b).configuration.name for b in difficulty[split]], split_rows)
            for label, entry in live.items():
                found[label] = live_rows(tiers, entry["gate"], items[split], features, seed)
            for alpha, router in hierarchical_d.items():
                d_rows = {**split_rows, "policy+difficulty": found["policy + difficulty feature"]}
                choices = [router.choose(b).configuration.name for b in difficulty[split]]
                found[f"RADAR → policy + difficulty feature, α = {alpha}"] = route_rows(choices, d_rows)
            for label, method_rows in found.items():
                by_method.setdefault(label, []).extend(add_coverage([dict(r) for r in method_rows], target))
        report["splits"][split] = {label: summarize(method_rows) for label, method_rows in by_method.items()}
    return report


def run_with_difficulty(tiers: Sequence[Any], gate: PolicyGate, item: Any, index: int, difficulty: float | None) -> dict[str, Any]:
    from stepgraph.training.collection.runs import run_seed

    from stepgraph.answers import is_correct
    from stepgraph.graph import build_graph

    state = build_graph(tiers, gate, prices=[PRICES] * 2).invoke(
        {"question": item.question}, context=RouterContext(temperature=DEFAULT_TEMPERATURE, seed=run_seed(0, index), difficulty=difficulty))
    return {"correct": float(is_correct(state["answer"], item.reference)), "flops": state["totals"]["flops"], "usd": state["totals"]["usd"]}


def live_rows(tiers: Sequence[Any], gate: PolicyGate, items: Sequence[Any], difficulties: Sequence[float | None],
              seed: int = 0) -> list[dict[str, Any]]:
    return run_gate(tiers, gate, items, seed=seed, context=RouterContext(temperature=DEFAULT_TEMPERATURE), prices=[PRICES] * 2, progress=False,
                    difficulties=difficulties)


def markdown(report: Mapping[str, Any]) -> str:
    def cell(s: Mapping[str, float], scale: float = 1.0, digits: int = 3) -> str:
        return f"{s['mean'] / scale:.{digits}f} [{s['low'] / scale:.{digits}f}, {s['high'] / scale:.{digits}f}]"

    lines = []
    for split, table in report["splits"].items():
        lines += [f"\n### {split} ({report['sizes'][split]} queries × seeds {report['seeds']})\n",
                  "| method | accuracy | relative coverage | MFLOPs | $ per 1k queries | configurations chosen |", "|---|---|---|---|---|---|"]
        for name, s in table.items():
            mix = ", ".join(f"{k} {v}" for k, v in s.get("mix", {}).items())
            lines.append(f"| {name} | {cell(s['correct'])} | {cell(s['covered'])} | {cell(s['flops'], 1e6, 1)} | "
                         f"{s['usd']['mean'] * 1000:.4f} | {mix} |")
    return "\n".join(lines) + "\n"


def bench_command(*, responses: Path, train_problems: int, calibration_problems: int, problems: int, alpha: Sequence[float],
                  seeds: Sequence[int], router: Path, out: Path, policy: Path | None = None, difficulty_policy: Path | None = None,
                  plain_policy: Path | None = None, extra: Sequence[str] | None = None, added_ability: str = "adaptive",
                  ) -> dict[str, Any]:
    """``radar bench``: ``run_bench`` on the testbed pair, written to ``out`` (results.json, table.md); its summary."""
    import json

    from stepgraph.defaults import DEFAULT_POLICY_DIR
    from stepgraph.testbed import load_pair

    torch.set_num_threads(1)
    tiers = load_pair()
    gate = PolicyGate.from_path(policy or DEFAULT_POLICY_DIR)
    load = lambda path: PolicyGate.from_path(path) if path and (path / "policy.json").is_file() else None
    report = run_bench(tiers, gate, responses=responses, alphas=alpha,
                       sizes={"train": train_problems, "calibration": calibration_problems, "test": problems, "shifted": problems},
                       difficulty_policy=load(difficulty_policy), plain_policy=load(plain_policy),
                       regressor=RadarRouter.from_path(router).regressor if (router / "radar.json").is_file() else None,
                       seeds=seeds, extra=extra or (), added_ability=added_ability)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "table.md").write_text(markdown(report))
    return {"out": str(out), "routers": report["routers"], "new_configuration": report.get("new_configuration"),
            "added": report.get("added"),
            "regressor": report["fit"]["regressor"]}
