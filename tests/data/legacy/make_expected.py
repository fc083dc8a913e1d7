"""How expected.json and the small fixtures were made: run once with the code before format 3 (git 39dbfa3), from the repo root."""
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, "tests")
from legacy_observations import observations
from stepgraph.allocator import ALLOCATOR_SCHEMA, tier_from_probabilities
from stepgraph.allocator_file import AllocatorArtifact, AllocatorNetwork
from stepgraph.gates.base import GateInput
from stepgraph.policy import PolicyArtifact, PolicyNetwork, TierPolicyArtifact, load_policy

from stepgraph.features import CONFIDENCE_SCHEMA
from stepgraph.gates import PolicyGate
from stepgraph.models.base import StepOutput

root = Path("tests/data/legacy")
root.mkdir(parents=True, exist_ok=True)
shutil.copytree("stepgraph/testbed/policies/default", root / "policy_v2_log_odds", dirs_exist_ok=True)
shutil.copytree("stepgraph/testbed/policies/three_tier", root / "tier_policy_v1", dirs_exist_ok=True)
# a small format-2 artifact on the probability scale (none shipped)
torch.manual_seed(3)
n = len(CONFIDENCE_SCHEMA.names)
net = PolicyNetwork(n, 8, 2)
with torch.no_grad():
    for p in net.parameters():
        p.mul_(3.0)
PolicyArtifact(net, 0.3, 0.05, CONFIDENCE_SCHEMA, [8.0, 0.8, 3.0, 12.0, 0.3, 0.5, 0.5], [2.0, 0.2, 2.0, 6.0, 0.5, 1.0, 0.3],
               8, 2, {"tiers": [{"name": "draft", "parameters": 156352}, {"name": "target", "parameters": 1100416}]},
               scale="probability").save(root / "policy_v2_probability")
# a small format-1 allocator over three tiers
k = len(ALLOCATOR_SCHEMA.names)
anet = AllocatorNetwork(k, 3, 8, 2)
with torch.no_grad():
    for p in anet.parameters():
        p.mul_(3.0)
tiers = [{"name": "draft", "parameters": 156352}, {"name": "mid", "parameters": 480768}, {"name": "target", "parameters": 1100416}]
AllocatorArtifact(anet, 0.35, 0.05, tiers, [200.0, 3.0, 1.5, 3.0, 0.3, 0.5, 0.2, 0.8, 9.0, 12.0],
                  [80.0, 1.0, 0.7, 2.0, 0.5, 0.8, 0.4, 0.2, 2.0, 5.0], 8, 2).save(root / "allocator_v1")

STEP = StepOutput("1+1=2", ["1"], [9.0], [[("1", -0.1)]], 10, 0, 1, False, "m")
expected = {}
policies = {"policy_v1": "tests/data/policy_v1", "policy_v2_log_odds": root / "policy_v2_log_odds",
            "policy_v2_probability": root / "policy_v2_probability", "tier_policy_v1": root / "tier_policy_v1",
            "shipped_api_only": "stepgraph/testbed/policies/api_only",
            "shipped_logits_only": "stepgraph/testbed/policies/logits_only"}
for name, path in policies.items():
    gate = PolicyGate(load_policy(path))
    a = gate.artifact
    n_tiers = len(a.tiers) if hasattr(a, "network") and isinstance(a, TierPolicyArtifact) else 2
    rows = []
    for obs in observations(a.schema.names, a.mean, a.std):
        for tier in range(n_tiers - 1):
            d = gate.decide(GateInput("q", (), STEP, obs, tier))
            rows.append([float(f"{d.score:.9g}"), int(d.escalate), d.tier])
    expected[name] = {"kappa": a.kappa, "scale": a.scale, "decisions": rows}
    print(name, a.kappa, a.scale, "escalations", sum(r[1] for r in rows), "of", len(rows))
al = AllocatorArtifact.load(root / "allocator_v1")
rows = []
for obs in observations(ALLOCATOR_SCHEMA.names, al.mean, al.std):
    for base in range(2):
        tier, score = tier_from_probabilities(al.probabilities(obs), al.kappa, base)
        rows.append([float(f"{score:.9g}"), tier])
expected["allocator_v1"] = {"kappa": al.kappa, "decisions": rows}
print("allocator", [sum(r[1] == t for r in rows) for t in range(3)])
(root / "expected.json").write_text(json.dumps(expected, separators=(",", ":")) + "\n")
