"""The real `langgraph dev` server on 127.0.0.1 serves the graph in langgraph.json; the SDK drives it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from langgraph_sdk import get_sync_client

from stepgraph.testbed import DEFAULT_TIERS
from stepgraph.testbed import testbed_task as shipped_task
from stepgraph.testbed.vllm_serving import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def langgraph_url(tmp_path_factory):
    port = free_port()
    workdir = tmp_path_factory.mktemp("langgraph")  # the server's state and log stay out of the repository
    log = (workdir / "server.log").open("w")
    env = {**os.environ, "LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false", "OMP_NUM_THREADS": "1",
           "LANGGRAPH_CLI_NO_ANALYTICS": "1"}
    cli = Path(sys.executable).parent / "langgraph"
    # The repository's langgraph.json with its relative paths made absolute, so the server can run
    # in a scratch directory and write its state there.
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str((ROOT / d).resolve()) for d in config["dependencies"]]
    config["graphs"] = {name: {**spec, "path": str(ROOT / spec["path"].removeprefix("./"))} for name, spec in config["graphs"].items()}
    (workdir / "langgraph.json").write_text(json.dumps(config))
    command = [str(cli), "dev", "--config", str(workdir / "langgraph.json"), "--no-browser", "--no-reload",
               "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(process, url + "/ok", 180, "langgraph dev", log.name)
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def test_studio_graph_streams_steps_over_the_sdk(langgraph_url):
    client = get_sync_client(url=langgraph_url)
    assistants = client.assistants.search(graph_id="stepgraph")
    assert assistants, "langgraph.json's graph is not served"
    schemas = client.assistants.get_schemas(assistants[0]["assistant_id"])
    assert "max_steps" in str(schemas.get("context_schema")) and "description" in str(schemas.get("context_schema"))
    problem = shipped_task().generate("test", 1, seed=17)[0]
    events = [
        part.data
        for part in client.runs.stream(None, "stepgraph", input={"question": problem.question},
                                       context={"seed": 0, "gate": "target"}, stream_mode="custom")
        if part.event == "custom"
    ]
    assert events and all(e["event"] == "step" and e["tier"] == DEFAULT_TIERS - 1 for e in events)  # the strongest tier
    result = client.runs.wait(None, "stepgraph", input={"question": problem.question}, context={"seed": 0, "gate": "target"})
    assert [s["text"] for s in result["steps"]] == [e["text"] for e in events]
    assert result["answer"] == str(problem.answer)


def test_the_served_graph_and_its_input_are_described(langgraph_url):
    client = get_sync_client(url=langgraph_url)
    assistant = client.assistants.search(graph_id="stepgraph")[0]
    assert "draft model writes each reasoning step" in (assistant.get("description") or "")
    schemas = client.assistants.get_schemas(assistant["assistant_id"])
    question = schemas["input_schema"]["properties"]["question"]
    assert "word problem" in question["description"]
    assert "max_question_chars" not in str(schemas["context_schema"])  # an operator limit, not a client setting


def test_a_second_question_on_a_server_thread_starts_a_fresh_answer(langgraph_url):
    client = get_sync_client(url=langgraph_url)
    thread = client.threads.create()
    first, second = shipped_task().generate("test", 2, seed=23)
    context = {"seed": 0, "gate": "target"}
    one = client.runs.wait(thread["thread_id"], "stepgraph", input={"question": first.question}, context=context)
    two = client.runs.wait(thread["thread_id"], "stepgraph", input={"question": second.question}, context=context)
    alone = client.runs.wait(None, "stepgraph", input={"question": second.question}, context=context)
    assert one["answer"] == str(first.answer) and two["answer"] == str(second.answer)
    assert [(s["index"], s["text"]) for s in two["steps"]] == [(s["index"], s["text"]) for s in alone["steps"]]
    # Prefill work depends on the models' prefix cache; generated FLOPs and calls do not.
    assert {k: two["totals"][k] for k in ("calls", "flops")} == {k: alone["totals"][k] for k in ("calls", "flops")}
    assert two["stop_reason"] == "final_answer" and two["escalations"] == (DEFAULT_TIERS - 1) * len(two["steps"])  # up every tier


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({"input": {"question": "   "}}, "The question is empty"),
        ({"input": {"question": "x" * 3000}}, "RouterLimits.max_question_chars"),
        ({"context": {"max_steps": 0}}, "RouterContext.max_steps must be an integer ≥ 1"),
        ({"context": {"temperature": "hot"}}, "RouterContext.temperature must be a finite number ≥ 0"),
        ({"context": {"max_steps": 1000}}, "above this graph's limit of 64 (RouterLimits.max_steps"),
    ],
    ids=["empty-question", "long-question", "max-steps-0", "temperature-text", "above-limit"],
)
def test_bad_runs_get_their_message_over_the_sdk(langgraph_url, run, message):
    client = get_sync_client(url=langgraph_url)
    kwargs = {"input": {"question": shipped_task().generate("test", 1, seed=5)[0].question}, **run}
    result = client.runs.wait(None, "stepgraph", raise_error=False, **kwargs)
    error = result.get("__error__") or {}
    assert message in error.get("message", ""), error
