"""Async runs await models that have ``agenerate_step`` on one event loop, and fall back to a thread for the rest."""

import asyncio
import threading

from pydantic import Field
from scripted import ScriptedModel
from test_chat_backend import ScriptedChat

from stepgraph.context import RouterContext
from stepgraph.graph import build_graph
from stepgraph.models.base import AsyncStepModel, StepModel
from stepgraph.models.chat import ChatStepModel
from stepgraph.routing.gates import AlwaysDraftGate, AlwaysTargetGate

SOLUTION = ["12+7=19", "19-5=14", "\\boxed{14}"]
QUESTIONS = [f"Ann has {12 + i} coins. She gets 7 more. She gives away 5. How many coins does she have?" for i in range(16)]


class AsyncScripted(ScriptedModel):
    """A scripted model with a native ``agenerate_step`` that waits like a network call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.running = self.peak = 0
        self.sync_calls = 0
        self.threads: set[int] = set()

    def generate_step(self, question, steps, **kwargs):
        self.sync_calls += 1
        return super().generate_step(question, steps, **kwargs)

    async def agenerate_step(self, question, steps, **kwargs):
        self.threads.add(threading.get_ident())
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0.02)
            return super().generate_step(question, steps, **kwargs)
        finally:
            self.running -= 1


def test_abatch_awaits_native_async_models_concurrently_on_the_event_loop():
    draft, target = AsyncScripted("small", 1_000, SOLUTION), AsyncScripted("large", 8_000, SOLUTION)
    assert isinstance(draft, AsyncStepModel) and not isinstance(ScriptedModel("s", 1, ["x"]), AsyncStepModel)
    graph = build_graph([draft, target], {"target": AlwaysTargetGate()})
    loop_threads: set[int] = set()

    async def run():
        loop_threads.add(threading.get_ident())
        return await graph.abatch([{"question": q} for q in QUESTIONS], context=RouterContext(seed=0))

    results = asyncio.run(run())
    assert all(r["answer"] == "14" and r["escalations"] == 3 for r in results)
    assert draft.peak > 1 and target.peak > 1  # the 16 runs overlap inside the models
    assert draft.sync_calls == target.sync_calls == 0
    assert draft.threads == target.threads == loop_threads  # every call ran on the event loop's thread


def test_sync_models_still_work_under_ainvoke_and_async_models_under_invoke():
    sync_pair = [ScriptedModel("small", 1_000, SOLUTION), ScriptedModel("large", 8_000, SOLUTION)]
    assert isinstance(sync_pair[0], StepModel)
    result = asyncio.run(build_graph(sync_pair, AlwaysDraftGate()).ainvoke({"question": QUESTIONS[0]}))
    assert result["answer"] == "14" and len(sync_pair[0].calls) == 3

    async_pair = [AsyncScripted("small", 1_000, SOLUTION), AsyncScripted("large", 8_000, SOLUTION)]
    result = build_graph(async_pair, AlwaysDraftGate()).invoke({"question": QUESTIONS[0]})
    assert result["answer"] == "14" and async_pair[0].sync_calls == 3 and async_pair[0].peak == 0


def test_astream_emits_the_same_steps_as_stream():
    pair = [AsyncScripted("small", 1_000, SOLUTION), AsyncScripted("large", 8_000, SOLUTION)]
    graph = build_graph(pair, AlwaysDraftGate())

    async def collect():
        return [event async for event in graph.astream({"question": QUESTIONS[0]}, stream_mode="custom")]

    events = asyncio.run(collect())
    assert [e["text"] for e in events] == [e["text"] for e in graph.stream({"question": QUESTIONS[0]}, stream_mode="custom")]


class AsyncChat(ScriptedChat):
    """ScriptedChat with a native ``_agenerate`` that waits like a server, counting overlap."""

    running: int = 0
    peak: int = 0
    threads: set = Field(default_factory=set)

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        self.threads.add(threading.get_ident())
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0.02)
            return self._generate(messages, stop, **kwargs)
        finally:
            self.running -= 1


def test_chat_step_model_awaits_the_chat_models_ainvoke():
    chats = [AsyncChat(failures=1), AsyncChat()]
    tiers = [ChatStepModel(chat, n_params=n, name=name, backoff_seconds=0.001) for chat, n, name in
             zip(chats, (1_000, 8_000), ("small", "large"), strict=True)]
    graph = build_graph(tiers, AlwaysDraftGate())
    loop_threads: set[int] = set()

    async def run():
        loop_threads.add(threading.get_ident())
        return await graph.abatch([{"question": q} for q in QUESTIONS[:8]], context=RouterContext(seed=0))

    results = asyncio.run(run())
    assert all(r["steps"][-1]["text"] == "\\boxed{14}" for r in results)
    assert chats[0].peak > 1 and chats[0].threads == loop_threads  # one transient failure retried, on the loop
