"""Compare K-tier policies and their routings on live calibration runs: where an escalated step goes, each tier's offset.

A K-tier policy escalates a step of tier k iff its log-odds of escalation − ``tier_offsets[k]`` ≥ κ,
to the stronger tier it finds likeliest or (``escalate_to = "next"``) one tier up (README, "The
policy format"). For each candidate routing this sweeps κ over every value that changes a decision
on the calibration problems (one run per piece of each problem's κ axis, ``tuning.sweep``, beside
the strongest tier alone with the same seeds) and prints the cheapest generated MFLOPs per problem
at each relative coverage level: the frontier each routing could reach, read in-sample. The last
column is what ``calibrate --runs`` would pick on these runs at ``--alpha`` (split conformal): its
coverage and MFLOPs. Pick a routing, then calibrate κ under it on other problems with
``stepgraph calibrate --runs N --escalate-to ... --tier-offsets ...``. Several ``--policy``
directories (e.g. a policy and its ``stepgraph refine``-d copy) are compared on the same runs.

    python examples/routing_offsets.py --problems 200 --escalate-to likeliest next --offsets 0 1.5 3
    python examples/routing_offsets.py --problems 200 --skip 200 ...      # the next 200 calibration problems
    python examples/routing_offsets.py --policy stepgraph/testbed/policies/three_tier runs/refined --problems 400 --offsets 3
"""

from __future__ import annotations

import argparse

from stepgraph.training.calibration.live_kappa import kappa_tunable
from stepgraph.training.calibration.tuning import breakpoint_thresholds, calibrate_on_runs, cheapest, evaluate, sweep
from stepgraph.training.collection.collect import testbed_items
from stepgraph.training.collection.runs import run_gate, strongest_alone

from stepgraph.defaults import THREE_TIER_POLICY_DIR
from stepgraph.routing.gates import PolicyGate
from stepgraph.testbed import close_pair, load_tiers

LEVELS = (0.96, 0.97, 0.98, 0.99, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", nargs="+", default=[str(THREE_TIER_POLICY_DIR)],
                        help="K-tier policies over the same tiers (default: the shipped three_tier)")
    parser.add_argument("--problems", type=int, default=200, help="calibration problems (default: %(default)s)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N calibration problems (default: %(default)s)")
    parser.add_argument("--escalate-to", nargs="+", default=["next"], choices=["likeliest", "next"])
    parser.add_argument("--offsets", type=float, nargs="+", default=[0.0, 1.5, 3.0],
                        help="candidate offsets of the mid tier (tier 1); the draft's stays 0 (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.02, help="the calibrated column's α (default: %(default)s)")
    args = parser.parse_args()
    items = testbed_items("calibration", args.skip + args.problems, seed=1)[args.skip :]
    artifacts = {path: PolicyGate.from_path(path).artifact for path in args.policy}
    tiers = load_tiers(next(iter(artifacts.values())).network.n_tiers)
    try:
        alone_tiers, alone_gate, alone_prices = strongest_alone(tiers, None)
        targets = run_gate(alone_tiers, alone_gate, items, seed=0, prices=alone_prices, progress=False)
        target_mflops = sum(r["flops"] for r in targets) / len(targets) / 1e6
        print(f"{len(items)} calibration problems; the strongest tier alone: {target_mflops:.1f} generated MFLOPs per problem")
        print("| policy | escalate to | mid offset | " + " | ".join(f"MFLOPs at coverage {c}" for c in LEVELS)
              + f" | calibrated at α = {args.alpha}: coverage, MFLOPs |")
        print("|---|---|---|" + "---|" * (len(LEVELS) + 1))
        for path, artifact in artifacts.items():
            for escalate_to in args.escalate_to:
                for offset in args.offsets:
                    gate = PolicyGate(artifact.with_routing(escalate_to, [0.0, offset]))
                    pieces = sweep(tiers, kappa_tunable(gate), items, targets, seed=0, progress=False)
                    curve = evaluate(pieces, breakpoint_thresholds(pieces))
                    cells = [f"{cheapest(curve, level)['flops'] / 1e6:.1f}" for level in LEVELS]
                    calibrated = calibrate_on_runs(pieces, args.alpha)["calibration"]
                    cells.append(f"{calibrated['covered']:.3f}, {calibrated['flops'] / 1e6:.1f}")
                    print(f"| {path} | {escalate_to} | {offset:g} | " + " | ".join(cells) + " |", flush=True)
    finally:
        close_pair(tiers)


if __name__ == "__main__":
    main()
