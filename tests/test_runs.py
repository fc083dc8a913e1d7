"""The shared run-and-summarise loop: concurrency does not change results; a journal resumes a killed run."""

import json

from stepgraph.training.collection.collect import testbed_items as make_items
from stepgraph.training.collection.runs import run_gate, run_seed

from stepgraph.routing.gates import AlwaysDraftGate, AlwaysTargetGate, ConfidenceThresholdGate
from stepgraph.testbed import load_pair

# wall time, and the prefix-cache reuse of a local model, which interleaved runs share (same tokens, other prefill)
VOLATILE = ("seconds", "prefill_flops", "usd")


def _stable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


class CountingModel:
    """Wraps a StepModel and counts its calls."""

    def __init__(self, model):
        self.model, self.name, self.n_params, self.calls = model, model.name, model.n_params, 0

    def generate_step(self, *args, **kwargs):
        self.calls += 1
        return self.model.generate_step(*args, **kwargs)


def test_run_seeds_are_disjoint_across_base_seeds():
    assert run_seed(0, 5) == 5 and run_seed(1, 0) == 100_003 and run_seed(1, 0) != run_seed(0, 100)


def test_concurrency_gives_the_same_rows():
    tiers, items = load_pair(), make_items("test", 4, seed=9)
    gate = ConfidenceThresholdGate(0.9, "api_confidence")
    one = run_gate(tiers, gate, items, seed=1, progress=False)
    three = run_gate(tiers, gate, items, seed=1, concurrency=3, progress=False)
    assert _stable(one) == _stable(three) and [r["problem_id"] for r in one] == [i.problem_id for i in items]


def test_a_journal_resumes_a_killed_run(tmp_path):
    tiers, items = [CountingModel(m) for m in load_pair()], make_items("test", 3, seed=4)
    journal = tmp_path / "rows.jsonl"
    full = run_gate(tiers, AlwaysTargetGate(), items, seed=2, progress=False, journal=journal)
    lines = journal.read_text().splitlines()
    assert len(lines) == 3 and {json.loads(line)["run_seed"] for line in lines} == {run_seed(2, i) for i in range(3)}
    kept = next(line for line in lines if json.loads(line)["problem_id"] == items[0].problem_id)
    journal.write_text(kept + "\n" + lines[-1][:20])  # killed while writing the second row
    calls_before = tiers[1].calls
    resumed = run_gate(tiers, AlwaysTargetGate(), items, seed=2, progress=False, journal=journal)
    assert _stable(resumed) == _stable(full)
    per_item = calls_before / 3
    assert tiers[1].calls - calls_before < calls_before and tiers[1].calls - calls_before >= per_item  # items 1 and 2 only
    assert len([line for line in journal.read_text().splitlines() if line.endswith("}")]) >= 3


def test_the_target_row_is_the_strongest_tier_alone_not_every_draft_thrown_away():
    # "FLOPs vs target" divides by the strongest tier writing every step: an always-escalate run over all tiers
    # would also pay each lower tier's draft (the bench's pair reference was 9% dearer that way).
    from scripted import ScriptedModel
    from stepgraph.training.collection.evaluate import evaluate_gates
    from stepgraph.training.data.records import Item

    script = ["a = 2 + 2 = 4.", "\\boxed{4}"]
    draft, mid, target = (ScriptedModel(name, n, script) for name, n in (("draft", 1_000), ("mid", 4_000), ("target", 16_000)))
    items = [Item("p0", "What is 2 + 2?", "4")]
    report = evaluate_gates([draft, mid, target], {"escalate": AlwaysTargetGate()}, items, progress=False)
    alone = run_gate([target, target], AlwaysDraftGate(), items, progress=False)[0]["flops"]
    assert report["target"]["mean_flops"] == alone
    assert report["escalate"]["mean_flops"] > alone and report["escalate"]["flops_vs_target"] > 1
    assert report["target"]["relative_coverage"] == 1.0 and report["draft"]["flops_vs_target"] == 1_000 / 16_000
