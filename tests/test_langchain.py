"""LangChain / LangGraph citizenship: runnable, chat model, tool in an agent, streaming, checkpoints."""

import asyncio
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langgraph.checkpoint.memory import InMemorySaver
from router_suite import RouterUnitSuite

from stepgraph.context import RouterContext
from stepgraph.defaults import resolve_gate
from stepgraph.graph import build_graph
from stepgraph.integrations.chat_model import ChatStepRouter
from stepgraph.integrations.settings import CONTEXT_FIELDS
from stepgraph.integrations.tool import routed_reasoning_tool
from stepgraph.testbed import load_pair
from stepgraph.testbed import testbed_task as shipped_task

pytestmark = pytest.mark.slow  # the shipped models behind LangChain's interfaces

PROBLEMS = shipped_task().generate("test", 3, seed=13)
LONG = [p for p in shipped_task().generate("test", 60, seed=13) if len(p.steps) >= 4][:2]  # runs of three drafts or more


def graph_answer(graph, question: str) -> str:
    """The answer the graph routes to for ``question`` with the default run settings (the tool's): right or wrong,
    it is the shipped models' and their gate's, which these tests do not pin."""
    return graph.invoke({"question": question}, context=RouterContext())["answer"]


class TestChatStepRouterStandard(RouterUnitSuite):
    """The langchain-tests standard unit suite; tool calling and structured output are not offered."""


@pytest.fixture(scope="module")
def graph():
    return build_graph(load_pair(), resolve_gate("threshold"))


def test_graph_is_a_runnable_sync_and_async(graph):
    inputs = [{"question": p.question} for p in PROBLEMS]
    config = {"configurable": {}}
    batch = graph.batch(inputs, config)
    assert [r["stop_reason"] for r in batch] == ["final_answer"] * 3
    single = graph.invoke(inputs[0], context=RouterContext(seed=0))
    again = asyncio.run(graph.ainvoke(inputs[0], context=RouterContext(seed=0)))
    assert single["steps"] == again["steps"]  # same seed, same answer, sync or async
    assert len(asyncio.run(graph.abatch(inputs[:2]))) == 2
    chunks = list(graph.stream(inputs[0], stream_mode="updates"))
    assert {next(iter(c)) for c in chunks} >= {"draft", "features", "gate", "append"}


def test_steps_stream_as_they_are_decided(graph):
    events = list(graph.stream({"question": PROBLEMS[0].question}, context=RouterContext(seed=0), stream_mode="custom"))
    final = graph.invoke({"question": PROBLEMS[0].question}, context=RouterContext(seed=0))
    assert [e["text"] for e in events] == [s["text"] for s in final["steps"]]
    assert [e["index"] for e in events] == list(range(len(events)))
    flops = [e["flops_so_far"] for e in events]
    assert flops == sorted(flops) and flops[-1] == pytest.approx(final["totals"]["flops"])
    assert all(e["tier"] in (0, 1) and e["confidence"] is not None for e in events)


def test_chat_model_in_an_lcel_chain():
    llm = ChatStepRouter(gate="threshold", seed=0)
    reply = llm.invoke([HumanMessage(PROBLEMS[1].question)])
    meta = reply.response_metadata
    assert meta["answer"] == str(PROBLEMS[1].answer) and meta["stop_reason"] == "final_answer"
    assert reply.content.endswith(f"\\boxed{{{PROBLEMS[1].answer}}}")
    assert reply.usage_metadata["output_tokens"] == meta["totals"]["output_tokens"] > 0
    assert set(meta["costs"]) <= {"0", "1"} and len(meta["steps"]) == reply.content.count("\n\n") + 1
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | llm | StrOutputParser()
    assert chain.invoke({"question": PROBLEMS[1].question}) == reply.content


def test_chat_model_streams_one_chunk_per_step():
    llm = ChatStepRouter(gate="threshold", seed=0)
    chunks = list(llm.stream(PROBLEMS[2].question))
    whole = llm.invoke(PROBLEMS[2].question)
    assert "".join(c.content for c in chunks) == whole.content
    steps = [v for c in chunks for k, v in c.response_metadata.items() if k.startswith("step_")]
    assert len(steps) == len(whole.response_metadata["steps"])
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert merged.usage_metadata["output_tokens"] == whole.usage_metadata["output_tokens"]


class ScriptedToolCaller(BaseChatModel):
    """A fake agent model: first asks for the tool, then reports the tool's answer."""

    question: str

    @property
    def _llm_type(self) -> str:
        return "scripted-tool-caller"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedToolCaller":
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        tool_results = [m for m in messages if m.type == "tool"]
        if not tool_results:
            call = {"name": "stepwise_reasoner", "args": {"question": self.question}, "id": "call-1", "type": "tool_call"}
            message = AIMessage(content="", tool_calls=[call])
        else:
            message = AIMessage(content=f"The tool says: {tool_results[-1].content}")
        return ChatResult(generations=[ChatGeneration(message=message)])


def test_agent_calls_the_routed_tool(graph):
    from langchain.agents import create_agent

    tool = routed_reasoning_tool(graph)
    assert tool.args_schema.model_json_schema()["required"] == ["question"]
    problem = PROBLEMS[0]
    agent = create_agent(ScriptedToolCaller(question=problem.question), [tool])
    messages = agent.invoke({"messages": [HumanMessage("Please solve: " + problem.question)]})["messages"]
    tool_message = next(m for m in messages if m.type == "tool")
    assert f'"answer": "{graph_answer(graph, problem.question)}"' in tool_message.content and '"flops":' in tool_message.content
    assert messages[-1].content.startswith("The tool says:")


class FlakyModel:
    """Wraps a model; raises like a dead server once ``fail_after`` calls were made."""

    def __init__(self, model, fail_after: int | None = None) -> None:
        self.model, self.name, self.n_params = model, model.name, model.n_params
        self.fail_after, self.calls = fail_after, []

    def generate_step(self, question, steps, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise ConnectionError("model server went away")
        self.calls.append(len(steps))
        return self.model.generate_step(question, steps, **kwargs)


def test_interrupted_run_resumes_without_repeating_paid_calls():
    draft, target = load_pair()
    flaky = [FlakyModel(draft, fail_after=2), FlakyModel(target)]
    saver = InMemorySaver()
    config = {"configurable": {"thread_id": "t1"}}
    graph = build_graph(flaky, resolve_gate("draft"), checkpointer=saver)
    question = LONG[0].question
    with pytest.raises(ConnectionError):
        graph.invoke({"question": question}, config, context=RouterContext(seed=0))
    kept = graph.get_state(config).values["steps"]
    assert len(kept) == 2  # the partial trace survives the failure
    healthy = [FlakyModel(draft), FlakyModel(target)]
    resumed = build_graph(healthy, resolve_gate("draft"), checkpointer=saver).invoke(None, config, context=RouterContext(seed=0))
    assert resumed["steps"][:2] == kept
    assert healthy[0].calls and min(healthy[0].calls) == 2  # steps 0 and 1 are not drafted again
    assert resumed["stop_reason"] == "final_answer"


KILLED_RUN = """
import sys, time, sqlite3
from langgraph.checkpoint.sqlite import SqliteSaver
from stepgraph.context import RouterContext
from stepgraph.defaults import resolve_gate
from stepgraph.graph import build_graph
from stepgraph.testbed import load_pair

class Slow:
    def __init__(self, model):
        self.model, self.name, self.n_params = model, model.name, model.n_params
    def generate_step(self, question, steps, **kwargs):
        print(f"call {self.name} {len(steps)}", flush=True)
        time.sleep(0.5)
        return self.model.generate_step(question, steps, **kwargs)

saver = SqliteSaver(sqlite3.connect(sys.argv[1], check_same_thread=False))
graph = build_graph([Slow(m) for m in load_pair()], resolve_gate("draft"), checkpointer=saver)
graph.invoke({"question": sys.argv[2]}, {"configurable": {"thread_id": "killed"}}, context=RouterContext(seed=0))
"""


def test_killed_run_resumes_from_its_sqlite_checkpoint(tmp_path):
    import signal
    import sqlite3
    import subprocess
    import sys

    from langgraph.checkpoint.sqlite import SqliteSaver

    path, question = tmp_path / "checkpoints.sqlite", LONG[1].question
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(path), question], stdout=subprocess.PIPE, text=True)
    calls = []
    for line in child.stdout:
        calls.append(line.split())
        if len(calls) == 3:  # three drafts made: two steps appended, the third in flight
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    config = {"configurable": {"thread_id": "killed"}}
    saver = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
    models = [FlakyModel(m) for m in load_pair()]
    graph = build_graph(models, resolve_gate("draft"), checkpointer=saver)
    kept = graph.get_state(config).values["steps"]
    assert 1 <= len(kept) <= 2  # checkpoints are written asynchronously: the last may lag the kill
    result = graph.invoke(None, config, context=RouterContext(seed=0))
    assert result["steps"][: len(kept)] == kept and result["stop_reason"] == "final_answer"
    # No checkpointed step is drafted (and paid for) again; a draft checkpointed before its step
    # was appended is not repeated either.
    assert len(kept) <= min(models[0].calls) <= len(kept) + 1


class ScriptedAgentModel(BaseChatModel):
    """A fake agent model that calls the tool once per question in ``questions``, then reports the last result."""

    questions: list[str]

    @property
    def _llm_type(self) -> str:
        return "scripted-agent"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedAgentModel":
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        results = [m for m in messages if m.type == "tool"]
        if len(results) < len(self.questions):
            args = {"question": self.questions[len(results)]}
            message = AIMessage(content="", tool_calls=[{"name": "stepwise_reasoner", "args": args,
                                                         "id": f"call-{len(results)}", "type": "tool_call"}])
        else:
            message = AIMessage(content=f"The tool says: {results[-1].content}")
        return ChatResult(generations=[ChatGeneration(message=message)])


def test_agent_sees_a_tool_error_and_goes_on(graph):
    from langchain.agents import create_agent

    problem = PROBLEMS[0]
    agent = create_agent(ScriptedAgentModel(questions=["   ", problem.question]), [routed_reasoning_tool(graph)])
    messages = agent.invoke({"messages": [HumanMessage("Please solve: " + problem.question)]})["messages"]
    failed, solved = [m for m in messages if m.type == "tool"]
    assert failed.status == "error" and "question is empty" in failed.content
    assert solved.status == "success" and f'"answer": "{graph_answer(graph, problem.question)}"' in solved.content
    assert messages[-1].content.startswith("The tool says:")


def test_a_model_failure_reaches_the_agent_as_a_tool_error():
    from langchain.agents import create_agent

    from stepgraph.errors import ModelOutputError

    class Broken(FlakyModel):
        def generate_step(self, question, steps, **kwargs):
            raise ModelOutputError("the server returned no logprobs")

    draft, target = load_pair()
    tool = routed_reasoning_tool(build_graph([Broken(draft), target], resolve_gate("draft")))
    agent = create_agent(ScriptedAgentModel(questions=[PROBLEMS[0].question]), [tool])
    messages = agent.invoke({"messages": [HumanMessage("Solve it.")]})["messages"]
    (failed,) = [m for m in messages if m.type == "tool"]
    assert failed.status == "error" and "no logprobs" in failed.content
    assert asyncio.run(tool.ainvoke({"question": ""})).startswith("The question cannot be answered as given")


def test_cache_key_holds_every_run_setting():
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import set_llm_cache

    question = PROBLEMS[0].question
    set_llm_cache(InMemoryCache())
    try:
        full = ChatStepRouter(seed=0).invoke(question)
        one = ChatStepRouter(seed=0, max_steps=1).invoke(question)
        assert len(full.response_metadata["steps"]) > 1 and len(one.response_metadata["steps"]) == 1
        assert one.response_metadata["stop_reason"] == "max_steps"
        drafted = ChatStepRouter(seed=0, max_steps=1, gate="draft")
        short = drafted.invoke(question, max_step_tokens=2)  # a per-call setting is in the key too
        assert short.usage_metadata["output_tokens"] == 2 < drafted.invoke(question).usage_metadata["output_tokens"]
    finally:
        set_llm_cache(None)
    assert set(ChatStepRouter()._identifying_params) >= {*CONTEXT_FIELDS, "stop", "max_tokens"}


def test_chat_settings_are_router_context_fields():
    defaults = RouterContext()
    llm = ChatStepRouter()
    assert all(getattr(llm, name) == getattr(defaults, name) for name in CONTEXT_FIELDS)
    assert ChatStepRouter(max_steps=3).router_context(seed=5) == RouterContext(max_steps=3, seed=5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_retries": 2}, "with_retry"), ({"model": "gpt-4o"}, "build_graph"), ({"api_key": "x"}, "api_key"),
     ({"max_tokens": 0}, "max_tokens")],
)
def test_settings_that_do_not_map_onto_the_graph_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChatStepRouter(**kwargs)


def test_bound_kwargs_are_honoured_or_refused():
    from stepgraph.errors import ConfigError

    question = PROBLEMS[0].question
    llm = ChatStepRouter(seed=0)
    assert len(llm.bind(max_steps=1).invoke(question).response_metadata["steps"]) == 1
    with pytest.raises(ConfigError, match="frequency_penalty"):
        llm.bind(frequency_penalty=0.5).invoke(question)
    with pytest.raises(ConfigError, match="graph"):
        llm.invoke(question, model="gpt-4o")
    with pytest.raises(ValueError, match="max_tokens"):
        llm.invoke(question, max_tokens=0)


def test_stop_sequence_ends_the_answer_at_the_first_step_holding_it():
    question = PROBLEMS[0].question
    full = ChatStepRouter(seed=0).invoke(question)
    steps = full.content.split("\n\n")
    stop = steps[1][steps[1].index("="):]  # the second step's "=..." tail
    cut = ChatStepRouter(seed=0).invoke(question, stop=[stop])
    assert cut.content == steps[0] + "\n\n" + steps[1][: steps[1].index("=")]
    assert cut.response_metadata["stop_reason"] == "stop_sequence" and cut.response_metadata["answer"] is None
    streamed = "".join(c.content for c in ChatStepRouter(seed=0, stop=[stop]).stream(question))
    assert streamed == cut.content


def test_max_tokens_is_a_budget_of_generated_tokens():
    llm = ChatStepRouter(seed=0, max_tokens=1)
    reply = llm.invoke(PROBLEMS[0].question)
    assert len(reply.response_metadata["steps"]) == 1 and reply.response_metadata["stop_reason"] == "max_tokens"
    assert reply.usage_metadata["output_tokens"] >= 1


def test_timeout_ends_the_answer_between_steps():
    reply = ChatStepRouter(seed=0, timeout=1e-9).invoke(PROBLEMS[0].question)
    assert len(reply.response_metadata["steps"]) == 1 and reply.response_metadata["stop_reason"] == "timeout"


def test_graph_run_is_nested_under_the_chat_model_run_and_reports_usage():
    from langchain_core.callbacks import BaseCallbackHandler

    class Recorder(BaseCallbackHandler):
        def __init__(self) -> None:
            self.chat, self.chains, self.llm_outputs = [], [], []

        def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kwargs):
            self.chat.append(run_id)

        def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
            self.chains.append((kwargs.get("name"), parent_run_id))

        def on_llm_end(self, response, **kwargs):
            self.llm_outputs.append(response.llm_output)

    llm = ChatStepRouter(seed=0)
    for call in (llm.invoke, lambda q, **kw: asyncio.run(llm.ainvoke(q, **kw))):
        recorder = Recorder()
        reply = call(PROBLEMS[0].question, config={"callbacks": [recorder]})
        (chat_run,) = recorder.chat
        assert recorder.chains[0] == ("stepgraph", chat_run)  # the graph's run is the chat run's child
        assert {name for name, _ in recorder.chains} >= {"draft", "append"}
        (output,) = recorder.llm_outputs
        assert output["model_name"] == "stepgraph"
        assert output["token_usage"]["completion_tokens"] == reply.usage_metadata["output_tokens"] > 0

    async def astream(q, **kw):
        return [chunk async for chunk in llm.astream(q, **kw)]

    for stream in (lambda q, **kw: _merged(llm.stream(q, **kw)), lambda q, **kw: _merged(asyncio.run(astream(q, **kw)))):
        recorder = Recorder()
        reply = stream(PROBLEMS[0].question, config={"callbacks": [recorder]})
        (chat_run,) = recorder.chat
        assert recorder.chains[0] == ("stepgraph", chat_run)  # streamed too: was a run of its own
        assert reply.response_metadata["answer"] is not None
    assert llm._get_ls_params()["ls_provider"] == "stepgraph"


class AsyncOnlyGraph:
    """The graph with only its async methods: a sync call in an async path fails."""

    def __init__(self, graph) -> None:
        self.graph, self.name = graph, graph.name

    def astream(self, *args, **kwargs):
        return self.graph.astream(*args, **kwargs)


def test_native_async_runs_the_graphs_async_methods(graph):
    question = PROBLEMS[1].question
    llm = ChatStepRouter(seed=0, gate="threshold", graph=AsyncOnlyGraph(graph))

    async def both():
        reply = await llm.ainvoke(question)
        chunks = [c async for c in llm.astream(question)]
        return reply, chunks

    reply, chunks = asyncio.run(both())
    sync = ChatStepRouter(seed=0, gate="threshold", graph=graph).invoke(question)
    assert reply.content == sync.content == "".join(c.content for c in chunks)
    assert chunks[-1].chunk_position == "last" and chunks[-1].response_metadata["answer"] == str(PROBLEMS[1].answer)


def test_escalated_steps_show_no_confidence_of_their_own():
    llm = ChatStepRouter(seed=0, gate="target")
    steps = llm.invoke(PROBLEMS[0].question).response_metadata["steps"]
    assert all(s["escalated"] and s["confidence"] is None and s["draft_confidence"] is not None for s in steps)


def test_a_first_batch_loads_the_default_models_once():
    import subprocess
    import sys

    problem = PROBLEMS[0]
    script = (
        "import sys; from stepgraph import ChatStepRouter; "
        "replies = ChatStepRouter(seed=0, gate='draft').batch([sys.argv[1]] * 3); "
        "print([r.response_metadata['answer'] for r in replies])"
    )
    done = subprocess.run([sys.executable, "-c", script, problem.question], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    alone = ChatStepRouter(seed=0, gate="draft").invoke(problem.question).response_metadata["answer"]
    assert done.stdout.strip() == str([alone] * 3) and "MISSING" not in done.stderr


def _merged(chunks):
    full = None
    for chunk in chunks:
        full = chunk if full is None else full + chunk
    return full


def test_the_embedded_default_and_a_custom_graph_of_the_same_name_never_share_a_cache_entry(graph):
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import set_llm_cache

    question = PROBLEMS[0].question
    # Named "stepgraph" by default, as the embedded one; its one gate sends every step to the target.
    custom = build_graph(load_pair(), resolve_gate("target"))
    assert custom.name == ChatStepRouter().graph_name == "stepgraph"
    set_llm_cache(InMemoryCache())
    try:
        default = ChatStepRouter(seed=0).invoke(question)  # the embedded default's own gate
        escalated = ChatStepRouter(seed=0, graph=custom).invoke(question)  # was default's cached reply
    finally:
        set_llm_cache(None)
    assert {s["tier"] for s in default.response_metadata["steps"]} != {1}
    assert {s["tier"] for s in escalated.response_metadata["steps"]} == {1}


def test_token_counts_use_the_shipped_tokenizer_and_never_the_network(monkeypatch):
    import socket
    import time

    import langchain_core.language_models.base as language_model

    from stepgraph.models.qwen2 import ChatTokenizer
    from stepgraph.testbed import DRAFT_MODEL_DIR

    def no_network(*args, **kwargs):
        raise AssertionError("get_num_tokens opened a connection")

    monkeypatch.setattr(language_model, "_get_token_ids_default_method", lambda text: pytest.fail("GPT-2 download"))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = PROBLEMS[0].question
    started = time.monotonic()
    count = ChatStepRouter().get_num_tokens(text)
    assert time.monotonic() - started < 30  # was 241 s of download retries offline, then 0
    assert count == len(ChatTokenizer(DRAFT_MODEL_DIR).encode(text)) > 0
    assert ChatStepRouter().get_num_tokens_from_messages([HumanMessage(text)]) >= count
