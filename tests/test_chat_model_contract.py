"""ChatStepRouter's contract on scripted tiers (no weights): cache key, nested runs, token counts,
refused features with what to do instead, former model names, RouterContext as the one source of
its settings. The same on the shipped models is in test_langchain.py."""

import asyncio
import copy
import warnings

import pytest
import torch
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from pydantic import BaseModel, Field
from router_suite import RouterUnitSuite
from scripted import ScriptedModel

from stepgraph.context import RouterContext
from stepgraph.errors import UnsupportedFeatureError
from stepgraph.graph import build_graph
from stepgraph.integrations import settings
from stepgraph.integrations.chat_model import ChatStepRouter
from stepgraph.integrations.fingerprint import graph_fingerprint
from stepgraph.integrations.tool import RoutedQuestion, routed_reasoning_tool
from stepgraph.routing.gates import AlwaysDraftGate, AlwaysTargetGate, ConfidenceThresholdGate

QUESTION = "Ann has 12 coins. She gets 7 more. She gives away 5. How many coins does she have?"
SOLUTION = ["12+7=19", "19-5=14", "\\boxed{14}"]


def _tiers(target_name: str = "large", target_script: list[str] = SOLUTION) -> list[ScriptedModel]:
    return [ScriptedModel("small", 1_000, SOLUTION, 10.0), ScriptedModel(target_name, 8_000, target_script, 20.0)]


def _graph(gate=None, tiers=None, name: str = "stepgraph"):
    return build_graph(tiers or _tiers(), gate or AlwaysDraftGate(), name=name)


class CountingCache(InMemoryCache):
    """An InMemoryCache that counts its hits and the keys it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.hits, self.keys = 0, []

    def lookup(self, prompt, llm_string):
        found = super().lookup(prompt, llm_string)
        self.hits += found is not None
        return found

    def update(self, prompt, llm_string, return_val):
        self.keys.append(llm_string)
        super().update(prompt, llm_string, return_val)


@pytest.fixture
def cache():
    cache = CountingCache()
    set_llm_cache(cache)
    yield cache
    set_llm_cache(None)


# --- the LLM cache key ----------------------------------------------------------------------------


def test_a_stop_field_is_in_the_cache_key(cache):
    graph = _graph()
    full = ChatStepRouter(graph=graph).invoke(QUESTION)
    cut = ChatStepRouter(graph=graph, stop=["="]).invoke(QUESTION)  # was answered from full's entry
    assert full.content == "\n\n".join(SOLUTION)
    assert cut.content == "12+7" and cut.response_metadata["stop_reason"] == "stop_sequence"
    assert cache.hits == 0 and len(set(cache.keys)) == 2
    per_call = ChatStepRouter(graph=graph).invoke(QUESTION, stop=["="])  # the same stop, given per call
    assert per_call.content == cut.content and cache.hits == 1


@pytest.mark.parametrize("differ", ["tiers", "gate", "graph"])
def test_routers_that_differ_only_in_their_graph_never_share_an_entry(cache, differ):
    tiers = _tiers()
    first = _graph(AlwaysTargetGate(), tiers)
    second = {
        "tiers": lambda: _graph(AlwaysTargetGate(), _tiers("large-b", ["7+12=19", "19-5=14", "\\boxed{14}"])),
        "gate": lambda: _graph(AlwaysDraftGate(), tiers),
        "graph": lambda: _graph(AlwaysTargetGate(), _tiers()),  # equal settings, another graph object: may share
    }[differ]()
    assert first.name == second.name == "stepgraph"
    one = ChatStepRouter(graph=first).invoke(QUESTION)
    two = ChatStepRouter(graph=second).invoke(QUESTION)
    if differ == "graph":  # the same tiers, gate and name: the same answers, so the entry is shared
        assert cache.hits == 1 and two.content == one.content
        return
    assert cache.hits == 0 and len(set(cache.keys)) == 2
    assert [s["model"] for s in two.response_metadata["steps"]] != [s["model"] for s in one.response_metadata["steps"]]


def test_a_gate_setting_is_in_the_cache_key(cache):
    tiers = _tiers()  # the draft's confidence is 10: one threshold accepts it, the other escalates
    accepting, escalating = (ChatStepRouter(graph=_graph(ConfidenceThresholdGate(t), tiers)) for t in (5.0, 15.0))
    accepted, escalated = accepting.invoke(QUESTION), escalating.invoke(QUESTION)
    assert cache.hits == 0
    assert accepted.response_metadata["escalations"] == 0 < escalated.response_metadata["escalations"]


def test_a_gate_artifact_is_in_the_fingerprint():
    from stepgraph.artifacts.tiers import allow_other_tiers
    from stepgraph.testbed.defaults import default_gate_name, resolve_gate

    gate = allow_other_tiers(resolve_gate(default_gate_name()))
    assert hasattr(gate, "artifact"), "the shipped default gate is a policy"
    changed = copy.deepcopy(gate)
    with torch.no_grad():
        next(changed.artifact.network.parameters()).add_(1e-3)
    tiers = _tiers()
    assert graph_fingerprint(_graph(gate, tiers)) == graph_fingerprint(_graph(copy.deepcopy(gate), tiers))
    assert graph_fingerprint(_graph(gate, tiers)) != graph_fingerprint(_graph(changed, tiers))


def test_the_same_router_hits_its_cache(cache):
    tiers = _tiers()
    llm = ChatStepRouter(graph=_graph(tiers=tiers))
    first = llm.invoke(QUESTION)
    calls = len(tiers[0].calls)
    again = llm.invoke(QUESTION)
    assert cache.hits == 1 and again.content == first.content and len(tiers[0].calls) == calls  # no model called
    assert asyncio.run(llm.ainvoke(QUESTION)).content == first.content and cache.hits == 2


def test_a_graph_stepgraph_cannot_read_is_keyed_by_its_object():
    class Wrapped:
        def __init__(self, graph) -> None:
            self.graph, self.name = graph, graph.name

    graph = _graph()
    one, two = Wrapped(graph), Wrapped(graph)
    assert graph_fingerprint(one) == graph_fingerprint(one) != graph_fingerprint(two)


# --- the graph's run nested under the chat run ----------------------------------------------------


def _run(llm: ChatStepRouter, path: str, config: dict) -> None:
    async def collect(stream):
        return [chunk async for chunk in stream]

    if path in ("invoke", "streaming invoke"):
        llm.invoke(QUESTION, config=config)
    elif path == "ainvoke":
        asyncio.run(llm.ainvoke(QUESTION, config=config))
    elif path == "stream":
        assert len(list(llm.stream(QUESTION, config=config))) > 1
    elif path == "astream":
        assert len(asyncio.run(collect(llm.astream(QUESTION, config=config)))) > 1


@pytest.mark.parametrize("path", ["invoke", "ainvoke", "stream", "astream", "streaming invoke"])
def test_the_graphs_run_is_a_child_of_the_chat_run_on_every_path(path):
    tracer = RunCollectorCallbackHandler()
    llm = ChatStepRouter(graph=_graph(), **({"streaming": True} if path == "streaming invoke" else {}))
    _run(llm, path, {"callbacks": [tracer], "tags": ["mine"]})
    (chat_run,) = tracer.traced_runs  # one trace: the graph's run is not a root of its own
    assert chat_run.run_type == "llm"
    (graph_run,) = chat_run.child_runs
    assert graph_run.name == "stepgraph" and graph_run.parent_run_id == chat_run.id and "mine" in graph_run.tags
    assert {run.name for run in graph_run.child_runs} >= {"draft", "append"}


@pytest.mark.parametrize("path", ["invoke", "stream", "astream"])
def test_in_a_chain_the_graph_is_under_the_chat_run_under_the_chain(path):
    tracer = RunCollectorCallbackHandler()
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | ChatStepRouter(graph=_graph())

    async def collect():
        return [chunk async for chunk in chain.astream({"question": QUESTION}, config={"callbacks": [tracer]})]

    if path == "invoke":
        chain.invoke({"question": QUESTION}, config={"callbacks": [tracer]})
    elif path == "stream":
        list(chain.stream({"question": QUESTION}, config={"callbacks": [tracer]}))
    else:
        asyncio.run(collect())
    (chain_run,) = tracer.traced_runs
    (chat_run,) = [run for run in chain_run.child_runs if run.run_type == "llm"]
    assert [run.name for run in chat_run.child_runs] == ["stepgraph"]


def test_astream_events_nest_the_graphs_events_under_the_chat_model():
    async def collect():
        return [e async for e in ChatStepRouter(graph=_graph()).astream_events(QUESTION, version="v2")]

    events = asyncio.run(collect())
    (start,) = [e for e in events if e["event"] == "on_chat_model_start"]
    graph_start = next(e for e in events if e["event"] == "on_chain_start" and e["name"] == "stepgraph")
    assert graph_start["parent_ids"] == [start["run_id"]]
    assert len([e for e in events if e["event"] == "on_chat_model_stream"]) > len(SOLUTION)


def test_streaming_invoke_reports_each_step_as_a_token():
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    handler = Tokens()
    reply = ChatStepRouter(graph=_graph(), streaming=True).invoke(QUESTION, config={"callbacks": [handler]})
    assert "".join(handler.tokens) == reply.content and len(handler.tokens) == len(SOLUTION)
    quiet = Tokens()
    ChatStepRouter(graph=_graph()).invoke(QUESTION, config={"callbacks": [quiet]})
    assert quiet.tokens == []


# --- token counts, refused features, former names -------------------------------------------------


def test_without_a_tier_tokenizer_tokens_are_estimated_without_a_download(monkeypatch):
    import langchain_core.language_models.base as language_model

    monkeypatch.setattr(language_model, "_get_token_ids_default_method", lambda text: pytest.fail("GPT-2 download"))
    llm = ChatStepRouter(graph=_graph())  # scripted tiers have no tokenizer, as API tiers
    assert llm.get_num_tokens("x" * 9) == 3
    with pytest.raises(UnsupportedFeatureError, match="custom_get_token_ids"):
        llm.get_token_ids("x")
    counted = ChatStepRouter(graph=_graph(), custom_get_token_ids=lambda text: list(range(len(text.split()))))
    assert counted.get_num_tokens("one two three") == 3


@pytest.mark.parametrize("refused", ["bind_tools", "with_structured_output"])
def test_tools_and_structured_output_say_what_to_use_instead(refused):
    class Answer(BaseModel):
        answer: str = Field(description="the answer")

    with pytest.raises(NotImplementedError, match=r"routed_reasoning_tool\(\) in an agent whose model calls tools"):
        getattr(ChatStepRouter(graph=_graph()), refused)([Answer] if refused == "bind_tools" else Answer)


def test_a_former_model_name_is_the_graphs_name_with_a_deprecation_warning():
    graph = _graph(name="mine")
    with pytest.warns(DeprecationWarning, match=r"model='stepgraph-testbed'\) is a former name.*'mine'"):
        llm = ChatStepRouter(graph=graph, model="stepgraph-testbed")
    assert llm.model_name == "mine"
    with pytest.warns(DeprecationWarning, match="former name"):
        reply = ChatStepRouter(graph=graph).invoke(QUESTION, model="stepgraph-testbed")
    assert reply.response_metadata["model_name"] == "mine"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ChatStepRouter(graph=graph, model="mine").model_name == "mine"


@pytest.mark.filterwarnings("ignore:ChatStepRouter\\(model='stepgraph-testbed'\\) is a former name:DeprecationWarning")
class TestFormerModelNameStandard(RouterUnitSuite):
    """langchain-tests' standard unit suite as earlier releases' users wrote it (model="stepgraph-testbed")."""

    @property
    def chat_model_params(self) -> dict:
        return {"model": "stepgraph-testbed", "temperature": 0.7, "seed": 0}


# --- RouterContext, the one source of the run settings --------------------------------------------


def test_the_chat_model_and_the_tool_take_router_contexts_defaults():
    defaults, llm = RouterContext(), ChatStepRouter(graph=_graph())
    assert all(getattr(llm, name) == getattr(defaults, name) for name in settings.CONTEXT_FIELDS)
    assert RoutedQuestion.model_fields["max_steps"].default == defaults.max_steps
    assert ChatStepRouter.model_fields["max_steps"].description == settings.context_fields()["max_steps"][1].description
    assert routed_reasoning_tool(_graph()).invoke({"question": QUESTION})["answer"] == "14"


def test_context_fields_read_a_dataclass_and_a_pydantic_router_context(monkeypatch):
    actual = settings.context_fields()

    class PydanticContext(BaseModel):  # RouterContext as a pydantic model, the same fields
        gate: str | None = Field(default=None, description="gate")
        max_steps: int = Field(default=16, ge=1, description="steps")
        budget_flops: float | None = None
        temperature: float = 0.7
        seed: int | None = 0
        sticky: bool = False
        max_step_tokens: int = 64
        difficulty: float | None = None
        stick_after: int | None = None
        max_answer_tokens: int | None = None
        tags: list[str] = Field(default_factory=list)

    monkeypatch.setattr(settings, "RouterContext", PydanticContext)
    as_model = settings.context_fields()
    assert list(as_model)[: len(actual)] == list(actual)
    assert {name: settings.context_default(name) for name in actual} == {name: getattr(RouterContext(), name) for name in actual}
    assert settings.context_default("tags") == [] and as_model["max_steps"][1].description == "steps"


def test_gates_differing_only_in_fitted_arrays_have_different_fingerprints():
    import numpy as np

    class FittedGate(AlwaysDraftGate):
        def __init__(self, means) -> None:
            self.means = np.asarray(means, dtype=np.float64)

    tiers = _tiers()
    fingerprints = {graph_fingerprint(_graph(FittedGate(means), tiers)) for means in ([0.0, 1.0], [0.0, 1.0], [0.0, 2.0])}
    assert len(fingerprints) == 2
