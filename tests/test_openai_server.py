"""`stepgraph serve` on 127.0.0.1, driven by the real `openai` client and `langchain_openai.ChatOpenAI`."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from stepgraph.testbed import DEFAULT_TIERS
from stepgraph.testbed import testbed_task as shipped_task
from stepgraph.testbed.vllm_serving import free_port, wait_healthy

pytestmark = pytest.mark.integration

API_KEY = "test-key-not-secret"
MAX_QUESTION_CHARS = 2000
PROBLEMS = shipped_task().generate("test", 8, seed=5)


def start_server(log_path: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`stepgraph serve` in a subprocess on a free port; returns it once /health answers."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STEPGRAPH_API_KEY": API_KEY}
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "stepgraph", "serve", "--host", "127.0.0.1", "--port", str(port), *options],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(process, url + "/health", 180, "stepgraph serve", str(log_path))
    return process, url


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    process, url = start_server(log, "--max-concurrent", "4", "--max-queued", "8",
                                "--max-question-chars", str(MAX_QUESTION_CHARS), "--max-steps", "12")
    readiness = [httpx.get(url + "/ready").status_code]
    deadline = time.time() + 180
    while readiness[-1] != 200 and time.time() < deadline:
        time.sleep(0.5)
        readiness.append(httpx.get(url + "/ready").status_code)
    yield url, log, readiness
    stop_server(process)
    assert API_KEY not in log.read_text(), "the API key was logged"


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def ask(client: openai.OpenAI, question: str, **kwargs):
    return client.chat.completions.create(model="stepgraph", messages=[{"role": "user", "content": question}], **kwargs)


def test_health_and_models(server, client):
    assert httpx.get(server[0] + "/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list()] == ["stepgraph"]


def test_ready_only_after_every_tier_answered_a_warm_up_step(server):
    # (the 503 while a tier is held is tested in-process: the testbed tiers load in well under a second)
    assert set(server[2]) <= {503, 200} and server[2][-1] == 200
    assert f"ready: {DEFAULT_TIERS} tiers answered a warm-up step" in server[1].read_text()
    body = httpx.get(server[0] + "/ready").json()
    assert body["status"] == "ready" and [t["tier"] for t in body["tiers"]] == list(range(DEFAULT_TIERS))


def test_request_ids_reach_the_sdk_and_every_log_line_with_the_latency(server, client):
    given = client.chat.completions.with_raw_response.create(
        model="stepgraph", messages=[{"role": "user", "content": PROBLEMS[0].question}],
        extra_headers={"x-request-id": "trace-abc-123"})
    assert given.headers["x-request-id"] == "trace-abc-123" and given.parse()._request_id == "trace-abc-123"
    made = ask(client, PROBLEMS[0].question)
    assert made._request_id and made._request_id != "trace-abc-123"
    time.sleep(0.5)
    lines = [line for line in server[1].read_text().splitlines() if made._request_id in line]
    assert len(lines) == 1 and " POST /v1/chat/completions 200 " in lines[0] and lines[0].endswith(" ms")
    assert '"POST /v1/chat/completions HTTP/1.1" 200' not in server[1].read_text()  # uvicorn's own access log is off
    metrics = httpx.get(server[0] + "/metrics").text
    assert 'stepgraph_http_requests_total{method="POST",path="/v1/chat/completions",status="200"}' in metrics
    assert "stepgraph_generated_flops_total" in metrics and "stepgraph_escalations_total" in metrics


def test_a_big_body_without_a_key_gets_401_at_once_and_health_stays_fast(server):
    port = int(server[0].rsplit(":", 1)[1])
    size = 60 * 2**20
    outcomes = {}
    for auth in ("", f"Authorization: Bearer {API_KEY}\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            started = time.monotonic()
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                         f"Content-Length: {size}\r\n\r\n".encode())

            def upload(sock=sock) -> None:
                try:
                    for _ in range(60):
                        sock.sendall(b" " * 2**20)
                except OSError:
                    pass  # the server answered and closed: the rest is never read

            uploader = threading.Thread(target=upload)
            uploader.start()
            health = []
            for _ in range(5):
                t0 = time.monotonic()
                assert httpx.get(server[0] + "/health", timeout=10).status_code == 200
                health.append(time.monotonic() - t0)
            head = sock.recv(200)
            outcomes[bool(auth)] = (head, time.monotonic() - started, max(health))
            sock.shutdown(socket.SHUT_RDWR)
            uploader.join(30)
    assert outcomes[False][0].startswith(b"HTTP/1.1 401") and outcomes[True][0].startswith(b"HTTP/1.1 413")
    for _, seconds, slowest_health in outcomes.values():
        assert seconds < 5 and slowest_health < 2.0  # the old server stalled /health for about 3 s


def test_invoke_returns_the_routed_answer_with_routing_details(client):
    problem = PROBLEMS[0]
    completion = ask(client, problem.question, seed=0)
    choice = completion.choices[0]
    details = completion.model_extra["stepgraph"]
    assert choice.finish_reason == "stop" and details["stop_reason"] == "final_answer"
    assert choice.message.content.endswith(f"\\boxed{{{details['answer']}}}")
    # one paragraph per step, each with the tier that wrote it; the escalation count agrees
    assert len(choice.message.content.split("\n\n")) == len(details["steps"])
    assert sum(s["escalated"] for s in details["steps"]) == details["escalations"]
    assert {str(s["tier"]) for s in details["steps"]} <= set(details["costs"])
    usage = completion.usage
    assert usage.completion_tokens == details["totals"]["output_tokens"] > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_sends_one_chunk_per_step_then_finish_and_usage(client):
    problem = PROBLEMS[1]
    whole = ask(client, problem.question, seed=3)
    chunks = list(ask(client, problem.question, seed=3, stream=True))
    step_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    final = chunks[-1]
    assert final.choices[0].finish_reason == whole.choices[0].finish_reason
    assert final.usage is not None and final.usage.completion_tokens > 0
    assert len(step_chunks) == len(final.model_extra["stepgraph"]["steps"])
    assert [c.model_extra["stepgraph"]["step"]["index"] for c in step_chunks] == list(range(len(step_chunks)))
    assert "".join(c.choices[0].delta.content for c in step_chunks) == whole.choices[0].message.content


def test_max_tokens_can_only_lower_the_limits(client):
    question = PROBLEMS[2].question
    capped = ask(client, question, max_tokens=1)
    assert capped.choices[0].finish_reason == "length"
    assert capped.model_extra["stepgraph"]["stop_reason"] == "max_tokens"
    assert len(capped.model_extra["stepgraph"]["steps"]) == 1
    # a hard cap: no step generates past what the earlier steps left (not checked only between steps)
    for cap in (10, 17):
        assert ask(client, question, max_tokens=cap).usage.completion_tokens <= cap
    # a huge max_tokens changes nothing: the operator's limits stay
    assert ask(client, question, max_tokens=10**9).choices[0].message.content == ask(client, question).choices[0].message.content


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 3.5}, "temperature"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * (MAX_QUESTION_CHARS + 1)}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
         "messages[0].content[0].type"),
    ],
)
def test_bad_requests_get_400_naming_the_field(client, kwargs, param):
    request = {"model": "stepgraph", "messages": [{"role": "user", "content": PROBLEMS[0].question}], **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["param"] == param and error["message"] and "Traceback" not in error["message"]


def test_unknown_model_and_malformed_json(server, client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["param"] == "model"
    response = httpx.post(server[0] + "/v1/chat/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_wrong_or_missing_token_gets_401(server):
    wrong = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask(wrong, PROBLEMS[0].question)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    response = httpx.post(server[0] + "/v1/chat/completions", json={"model": "stepgraph", "messages": []})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_langchain_chat_openai_invoke_and_stream(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="stepgraph", base_url=server[0] + "/v1", api_key=API_KEY, seed=1, max_retries=0)
    question = PROBLEMS[3].question
    reply = llm.invoke(question)
    assert "\\boxed{" in reply.content and reply.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream(question))
    assert sum(1 for c in chunks if c.content) >= 2
    assert "".join(c.content for c in chunks) == reply.content


def test_load_every_request_answered_or_refused_cleanly(server):
    """200 requests from 16 clients at once, against 4 running + 8 queued: answers or 429s, nothing else."""
    url = server[0] + "/v1"
    references = {p.question: ask(openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0), p.question)
                  .model_extra["stepgraph"]["answer"] for p in PROBLEMS[:4]}
    outcomes: list[str] = []
    lock = threading.Lock()

    def one_client(index: int) -> None:
        client = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=120)
        for j in range(index, 200, 16):
            question = PROBLEMS[j % 4].question
            try:
                answer = ask(client, question).model_extra["stepgraph"]["answer"]
                outcome = "ok" if answer == references[question] else f"wrong answer {answer!r}"
            except openai.RateLimitError as exc:
                outcome = "refused" if exc.body["type"] == "rate_limit_error" else f"bad 429 {exc.body}"
            except Exception as exc:  # noqa: BLE001 - anything else is a failure to report
                outcome = f"{type(exc).__name__}: {exc}"
            with lock:
                outcomes.append(outcome)

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one_client, range(16)))
    elapsed = time.monotonic() - start
    failures = [o for o in outcomes if o not in ("ok", "refused")]
    assert len(outcomes) == 200 and not failures, failures[:5]
    assert outcomes.count("ok") >= 12, "the server refused nearly everything"
    assert outcomes.count("refused") > 0, "16 clients against 12 places should see some 429s"
    assert elapsed < 600
    assert httpx.get(server[0] + "/health").status_code == 200


def test_sigterm_lets_the_in_flight_stream_finish(tmp_path):
    log = tmp_path / "server.log"
    process, url = start_server(log, "--max-steps", "12")
    client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    stream = ask(client, PROBLEMS[4].question, stream=True)
    first = next(iter(stream))  # the run is in flight
    process.send_signal(signal.SIGTERM)
    rest = list(stream)
    assert first.choices[0].delta.content and rest[-1].choices[0].finish_reason in ("stop", "length")
    # uvicorn shuts down gracefully, then exits by the signal it caught (as the supervisor expects)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def test_example_openai_client_runs():
    example = Path(__file__).resolve().parents[1] / "examples" / "openai_client.py"
    env = {k: v for k, v in os.environ.items() if k not in ("STEPGRAPH_URL", "STEPGRAPH_API_KEY")} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "answer: 42" in done.stdout and done.stdout.count("[tier ") == 4


def test_a_thread_survives_a_replica_restart_and_moves_to_another_replica(tmp_path, postgres_server):
    database = postgres_server()
    first, url_a = start_server(tmp_path / "a.log", "--checkpointer", database)
    second, url_b = start_server(tmp_path / "b.log", "--checkpointer", database)
    try:
        replica_a = openai.OpenAI(base_url=url_a + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        replica_b = openai.OpenAI(base_url=url_b + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        asked = ask(replica_a, PROBLEMS[0].question, extra_headers={"x-stepgraph-thread-id": "conversation-1"})
        assert asked.model_extra["stepgraph"]["thread_id"] == "conversation-1"
        assert asked.model_extra["stepgraph"]["answers"] == 1
        stop_server(first)
        # replica B continues the thread replica A wrote (the `user` field names it too), streaming or not
        chunks = list(ask(replica_b, PROBLEMS[1].question, user="conversation-1", stream=True))
        assert chunks[-1].model_extra["stepgraph"] == chunks[-1].model_extra["stepgraph"] | {
            "thread_id": "conversation-1", "answers": 2}
        again = ask(replica_b, PROBLEMS[0].question, extra_headers={"x-stepgraph-thread-id": "conversation-1"})
        assert again.model_extra["stepgraph"]["answers"] == 3
        assert again.model_extra["stepgraph"]["answer"] == asked.model_extra["stepgraph"]["answer"]
        other = ask(replica_b, PROBLEMS[0].question)  # no thread id: a new thread of its own
        assert other.model_extra["stepgraph"]["answers"] == 1 and other.model_extra["stepgraph"]["thread_id"] != "conversation-1"
        with pytest.raises(openai.BadRequestError):
            ask(replica_b, PROBLEMS[0].question, user="no spaces please")
    finally:
        stop_server(first)
        stop_server(second)
