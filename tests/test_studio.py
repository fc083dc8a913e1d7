"""The real `langgraph dev` server on 127.0.0.1 serves the graph in langgraph.json; the SDK drives it."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from langgraph_sdk import get_sync_client

from stepgraph.testbed import task

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def langgraph_url(tmp_path_factory):
    port = _free_port()
    workdir = tmp_path_factory.mktemp("langgraph")  # the server's state and log stay out of the repository
    log = (workdir / "server.log").open("w")
    env = {**os.environ, "LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false", "OMP_NUM_THREADS": "1",
           "LANGGRAPH_CLI_NO_ANALYTICS": "1"}
    cli = Path(sys.executable).parent / "langgraph"
    # The repository's langgraph.json with its relative paths made absolute, so the server can run
    # in a scratch directory and write its state there.
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str((ROOT / d).resolve()) for d in config["dependencies"]]
    config["graphs"] = {name: str(ROOT / spec.removeprefix("./")) for name, spec in config["graphs"].items()}
    (workdir / "langgraph.json").write_text(json.dumps(config))
    command = [str(cli), "dev", "--config", str(workdir / "langgraph.json"), "--no-browser", "--no-reload",
               "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"langgraph dev exited with {process.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url + "/ok", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        process.kill()
        raise RuntimeError(f"langgraph dev did not become healthy; see {log.name}")
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
    problem = task.generate("test", 1, seed=17)[0]
    events = [
        part.data
        for part in client.runs.stream(None, "stepgraph", input={"question": problem.question},
                                       context={"seed": 0, "gate": "target"}, stream_mode="custom")
        if part.event == "custom"
    ]
    assert events and all(e["event"] == "step" and e["tier"] == 1 for e in events)
    result = client.runs.wait(None, "stepgraph", input={"question": problem.question}, context={"seed": 0, "gate": "target"})
    assert [s["text"] for s in result["steps"]] == [e["text"] for e in events]
    assert result["answer"] == str(problem.answer)
