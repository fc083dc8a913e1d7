"""Collect behaviour traces: run the graph with an exploring gate and record what offline training needs.

For every problem: one routed run under the behaviour gate (its μ(escalate | o) is recorded per
step), the strongest tier's version of every step from the same prefix (taken from the run when
the step was escalated, generated with the same seed otherwise) so that both per-step verdicts
are known, and one strongest-tier-alone run for R_M. Episodes go to the trace store as they
finish; problems already in the store are skipped, so a killed collection resumes.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from stepgraph.training.collection.tier_traces import tier_table
from stepgraph.training.collection.verifiers import StepVerifier
from stepgraph.training.data.records import Episode, Item, StepRecord  # Item lived here; still importable from collect
from stepgraph.training.data.store import TraceStore
from tqdm import tqdm

from stepgraph.answers import is_correct
from stepgraph.artifacts.tiers import check_tiers
from stepgraph.context import RouterContext
from stepgraph.errors import TraceStoreError
from stepgraph.features import FEATURE_SCHEMA
from stepgraph.graph import build_graph
from stepgraph.graph.nodes import call_seed
from stepgraph.models.base import DEFAULT_TEMPERATURE, StepModel, StepOutput
from stepgraph.models.costs import call_cost
from stepgraph.routing.gates import AlwaysDraftGate, ConfidenceThresholdGate, ExploringGate
from stepgraph.routing.gates.base import Gate
from stepgraph.testbed import testbed_task


class DraftRecorder:
    """Wraps the draft tier and keeps each step it writes, keyed by the number of steps before it.

    The graph's state keeps only a step's text; the trace keeps the draft's whole StepOutput so
    that features of a later schema can be recomputed from it. Anything else is the model's.
    """

    def __init__(self, model: StepModel) -> None:
        self.model = model
        self.outputs: dict[int, StepOutput] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    @property
    def n_params(self) -> int:
        return int(self.model.n_params)

    def generate_step(self, question: str, steps: Sequence[str], **kwargs: Any) -> StepOutput:
        out = self.model.generate_step(question, steps, **kwargs)
        self.outputs.setdefault(len(steps), out)
        return out


def collect_episode(
    tiers: Sequence[StepModel],
    behaviour: Gate,
    verifier: StepVerifier,
    item: Item,
    *,
    seed: int,
    temperature: float = DEFAULT_TEMPERATURE,
    max_steps: int = 16,
    context: RouterContext | None = None,
    record_tiers: bool = False,
) -> Episode:
    """Run one problem under the behaviour gate and turn the final state into an Episode.

    ``context`` (default: from ``temperature`` and ``max_steps``) sets the limits; its seed is replaced by ``seed``.
    ``record_tiers`` also records every tier's step from each prefix (``StepRecord.tiers``), for K-tier training.
    """
    base = context or RouterContext(temperature=temperature, max_steps=max_steps)
    context = RouterContext(**{**vars(base), "seed": seed})
    temperature = context.temperature
    recorder = DraftRecorder(tiers[0])
    state = build_graph([recorder, *tiers[1:]], behaviour).invoke({"question": item.question}, context=context)
    strongest = tiers[-1]
    records: list[StepRecord] = []
    prior: list[str] = []
    escalations = 0
    for step in state["steps"]:
        draft = step["attempts"][0]
        if step["escalated"]:
            escalated_text, escalate_flops = step["attempts"][-1]["text"], step["attempts"][-1]["cost"]["flops"]
        else:  # what the strongest tier would have written here, with the seed the graph would use
            out = strongest.generate_step(
                item.question, prior, temperature=temperature, seed=call_seed(seed, len(prior), len(tiers) - 1),
                max_tokens=context.max_step_tokens,
            )
            escalated_text, escalate_flops = out.text, call_cost(out, strongest.n_params)["flops"]
        action = int(step["escalated"])
        records.append(
            StepRecord(
                index=step["index"],
                observation=step["observation"],
                action=action,
                mu_escalate=float(step["mu_escalate"] if step["mu_escalate"] is not None else action),
                draft=draft["text"],
                escalated=escalated_text,
                draft_correct=verifier.verify(item.question, item.reference, prior, draft["text"]),
                escalated_correct=verifier.verify(item.question, item.reference, prior, escalated_text),
                draft_flops=draft["cost"]["flops"],
                escalate_flops=escalate_flops,
                cost=sum(a["cost"]["flops"] for a in step["attempts"]),
                draft_output=recorder.outputs[step["index"]].to_dict() if step["index"] in recorder.outputs else None,
                tiers=tier_table(tiers, verifier, question=item.question, reference=item.reference, prior=prior, seed=seed,
                                 context=context, escalations=escalations) if record_tiers else None,
            )
        )
        prior.append(step["text"])
        escalations += len(step["attempts"]) - 1
    alone = build_graph([strongest, strongest], AlwaysDraftGate()).invoke({"question": item.question}, context=context)
    return Episode(
        problem_id=item.problem_id,
        question=item.question,
        reference=item.reference,
        steps=records,
        reward=int(is_correct(state["answer"], item.reference)),
        target_reward=int(is_correct(alone["answer"], item.reference)),
        target_flops=alone["totals"]["flops"],
        behaviour=getattr(behaviour, "name", type(behaviour).__name__),
        seed=seed,
        meta={"stop_reason": state["stop_reason"], "answer": state["answer"], "target_answer": alone["answer"]},
    )


def collect(
    store: TraceStore,
    items: Sequence[Item],
    make_tiers: Callable[[], Sequence[StepModel]],
    verifier: StepVerifier,
    *,
    split: str = "train",
    threshold: float = 0.9,
    feature: str = "api_confidence",
    epsilon: float = 0.3,
    seed: int = 0,
    temperature: float = DEFAULT_TEMPERATURE,
    workers: int = 1,
    progress: bool = True,
    context: RouterContext | None = None,
    verifier_for: Callable[[Sequence[StepModel]], StepVerifier] | None = None,
    describe_tiers: Callable[[Sequence[StepModel]], Sequence[Mapping[str, Any]]] | None = None,
    record_tiers: bool = False,
) -> dict[str, Any]:
    """Collect episodes for the items not yet in ``store``; each worker owns its own models.

    Each problem is claimed in the store before it runs, so several collectors (processes or
    machines) on one store share the work instead of repeating it.

    The behaviour gate explores around a confidence threshold: with probability ``epsilon`` a
    uniformly random action, else escalate iff the confidence ``feature`` is below ``threshold``.
    ``verifier_for`` builds a verifier per worker from its tiers (the rollout verifier completes
    with the worker's strongest tier); otherwise ``verifier`` is shared. The tiers are recorded in
    the store (``describe_tiers(tiers)``, or name and parameters); a store collected on other tiers is refused.
    ``record_tiers`` records every tier's step from each prefix, for K-tier training (``collect_episode``).
    """
    from stepgraph.training.collection.runs import run_seed

    done = store.problem_ids()
    todo = [(i, item) for i, item in enumerate(items) if item.problem_id not in done]
    if len(store) and store.meta("feature_schema") not in (None, FEATURE_SCHEMA.to_dict()):
        raise TraceStoreError(f"{store.path} holds traces of feature schema {store.meta('feature_schema')}; new traces have "
                              f"{FEATURE_SCHEMA.to_dict()}. Collect into a new --store, or copy this one with its observations "
                              f"recomputed first: stepgraph reobserve --store {store.path} --out NEW.")
    store.set_meta("feature_schema", FEATURE_SCHEMA.to_dict())
    worker_tiers = [make_tiers() for _ in range(max(1, workers))]
    info = list(describe_tiers(worker_tiers[0]) if describe_tiers else [{"name": m.name, "parameters": m.n_params} for m in worker_tiers[0]])
    if len(store):
        check_tiers(store.meta("models"), info, f"The trace store {store.path}")
    store.set_meta("models", info)
    verifiers = [verifier_for(t) for t in worker_tiers] if verifier_for else [verifier] * len(worker_tiers)

    def run(slot: int, index: int, item: Item) -> Episode:
        behaviour = ExploringGate(ConfidenceThresholdGate(threshold, feature), epsilon=epsilon, seed=run_seed(seed, index))
        return collect_episode(worker_tiers[slot], behaviour, verifiers[slot], item, seed=run_seed(seed, index),
                               temperature=temperature, context=context, record_tiers=record_tiers)

    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"collect {split}", disable=not progress)
    collected = duplicates = 0
    with ThreadPoolExecutor(max_workers=len(worker_tiers)) as pool, _heartbeat(store):
        while todo:
            progressed = False
            pending = iter(todo)
            while batch := list(itertools.islice(pending, len(worker_tiers))):
                # Another collector on the same store may hold (or have finished) a problem meanwhile.
                claimed = [(i, item) for i, item in batch if store.claim(item.problem_id)]
                futures = [pool.submit(run, slot, i, item) for slot, (i, item) in enumerate(claimed)]
                for future in futures:
                    duplicates += not store.add(future.result(), split)  # written at once: a kill loses no finished episode
                    collected += 1
                progressed |= bool(claimed)
            done = store.problem_ids()
            left = [(i, item) for i, item in todo if item.problem_id not in done]
            bar.update(len(todo) - len(left))
            if left and not progressed:
                # Every problem left is leased by another collector: wait for it to finish them, or for a
                # dead collector's leases to lapse, and take those over.
                time.sleep(min(5.0, store.lease_seconds / 4))
            todo = left
    bar.close()
    return {"collected": collected, "duplicates": duplicates, "skipped": len(items) - collected, "total": len(store)}


@contextmanager
def _heartbeat(store: TraceStore) -> Iterator[None]:
    """Renew this collector's leases every third of a lease while it runs; release them when it stops."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(store.lease_seconds / 3):
            try:
                store.renew()
            except TraceStoreError:
                return  # disk full: the collector's next write reports it in one line

    thread = threading.Thread(target=beat, name="trace-store-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        # A collector that stops, finished or failed (a full disk), holds nothing: a rerun in this
        # process would otherwise wait out its own leases, as its pid is still alive.
        with suppress(TraceStoreError):
            store.release()


def testbed_items(split: str, n: int, seed: int = 0) -> list[Item]:
    """Testbed problems as collection items (id = split:seed:index)."""
    return [Item(f"{split}:{seed}:{i}", p.question, str(p.answer)) for i, p in enumerate(testbed_task().generate(split, n, seed=seed))]


def default_store_path() -> Path:
    return Path("runs") / "traces.sqlite"
