"""The OpenAI-compatible app in-process (no socket) on scripted models: admission, limits, error bodies."""

import asyncio
import contextlib
import dataclasses
import json
import threading

import httpx
import pytest
from scripted import ScriptedModel

from stepgraph.cli import main
from stepgraph.context import SERVER_LIMITS
from stepgraph.graph import build_graph
from stepgraph.integrations.openai import create_app
from stepgraph.routing.gates import AlwaysDraftGate

STEPS = ["1+1=2", "2+2=4", "\\boxed{4}"]
QUESTION = {"model": "stepgraph", "messages": [{"role": "user", "content": "What is 1+1+2?"}]}


class HeldModel(ScriptedModel):
    """Blocks in generate_step until released, so a test can hold a request in flight."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.entered, self.release = threading.Event(), threading.Event()

    def generate_step(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(30), "the test never released the model"
        return super().generate_step(*args, **kwargs)


class FailingModel(ScriptedModel):
    def __init__(self, error: Exception) -> None:
        super().__init__("draft", 1000, STEPS)
        self.error = error

    def generate_step(self, *args, **kwargs):
        raise self.error


def draft_app(draft: ScriptedModel, max_queued: int | None = None, **options):
    """An app over ``draft`` and a scripted target; with ``max_queued``, one running slot and that many queued."""
    if max_queued is not None:
        options["limits"] = dataclasses.replace(SERVER_LIMITS, max_concurrent=1, max_queued=max_queued)
    return create_app(build_graph([draft, ScriptedModel("target", 4000, STEPS)], AlwaysDraftGate()), **options)


@contextlib.asynccontextmanager
async def first_held(app, draft: HeldModel):
    """A client, and a first request in flight, held in ``draft`` (``draft.release`` lets it finish)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=QUESTION))
        await asyncio.to_thread(draft.entered.wait, 30)
        yield client, first


def post(app, body):
    async def go():
        # as uvicorn does: the app's 500 response goes out, the exception is re-raised only to the server's log
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post("/v1/chat/completions", json=body)

    return asyncio.run(go())


def test_requests_past_the_concurrency_limit_get_429_and_the_slot_is_released():
    draft = HeldModel("draft", 1000, STEPS)
    app = draft_app(draft, 0)

    async def scenario():
        async with first_held(app, draft) as (client, first):
            refused = await client.post("/v1/chat/completions", json=QUESTION)
            draft.release.set()
            answered = await first
            again = await client.post("/v1/chat/completions", json=QUESTION)
            return refused, answered, again

    refused, answered, again = asyncio.run(scenario())
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    assert answered.status_code == 200 and answered.json()["stepgraph"]["answer"] == "4"
    assert again.status_code == 200


def test_operator_budget_ends_the_answer_with_finish_reason_length():
    tiers = [ScriptedModel("draft", 1000, STEPS), ScriptedModel("target", 4000, STEPS)]
    # one step of "1+1=2\n\n" is 6 tokens = 12,000 FLOPs at 1,000 parameters: the budget ends it there
    app = create_app(build_graph(tiers, AlwaysDraftGate()), limits=dataclasses.replace(SERVER_LIMITS, max_budget_flops=10_000))
    body = post(app, QUESTION).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["stepgraph"]["stop_reason"] == "budget" and len(body["stepgraph"]["steps"]) == 1


def test_model_errors_are_openai_errors_without_internals_and_free_their_slot():
    too_long = FailingModel(ValueError("the prompt exceeds the context window"))
    app = create_app(build_graph([too_long, ScriptedModel("target", 4000, STEPS)], AlwaysDraftGate()),
                     limits=dataclasses.replace(SERVER_LIMITS, max_concurrent=1, max_queued=0))
    for _ in range(2):  # the second request would get 429 if the first had kept its slot
        response = post(app, QUESTION)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "messages" and "context window" in response.json()["error"]["message"]

    crash = FailingModel(RuntimeError("secret internal detail"))
    app = create_app(build_graph([crash, ScriptedModel("target", 4000, STEPS)], AlwaysDraftGate()))
    response = post(app, QUESTION)
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert len(response.headers["x-request-id"]) == 32  # even the 500 from Starlette's error middleware has one
    assert "secret internal detail" not in response.text and "Traceback" not in response.text


def test_a_stream_that_fails_ends_with_an_error_object_and_done():
    crash = FailingModel(RuntimeError("secret internal detail"))
    app = create_app(build_graph([crash, ScriptedModel("target", 4000, STEPS)], AlwaysDraftGate()))
    response = post(app, QUESTION | {"stream": True})
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and '"server_error"' in events[-2]
    assert "secret internal detail" not in response.text


@pytest.mark.parametrize(("argv", "names"), [
    (["serve", "--max-concurrent", "0"], "max_concurrent"),
    (["serve", "--max-steps", "0"], "max_steps"),
    (["serve", "--gate", "nope"], "--gate"),
    (["mcp", "--gate", "nope"], "--gate"),
    (["serve", "--config", "run.toml"], "run.toml"),  # no run-spec support yet, or no such file
    (["serve", "--checkpointer", "mysql://u:secret@db/x"], "--checkpointer must be a postgresql:// URL"),
])
def test_bad_server_options_are_refused_before_anything_starts(capsys, argv, names):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("stepgraph: error:") and names in err and "Traceback" not in err


def test_the_former_server_limits_still_build_the_one_limits_type():
    from stepgraph.context import RouterLimits
    from stepgraph.integrations import openai_server

    with pytest.warns(DeprecationWarning, match="RouterLimits"):
        limits = openai_server.ServerLimits(budget_flops=10_000, max_concurrent=2)
    assert isinstance(limits, RouterLimits)
    assert (limits.max_budget_flops, limits.max_concurrent, limits.max_steps, limits.max_step_tokens) == (10_000, 2, 16, 64)
    assert openai_server.create_app is create_app


def test_a_body_limit_below_one_byte_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--max-body-bytes", "0"])
    assert exit_.value.code == 2 and "--max-body-bytes: must be an integer >= 1" in capsys.readouterr().err


class SlowModel(ScriptedModel):
    def generate_step(self, *args, **kwargs):
        import time

        time.sleep(0.05)
        return super().generate_step(*args, **kwargs)


def _data_events(text):
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_ready_is_503_until_every_tier_answered_a_warm_up_step():
    draft, target = HeldModel("draft", 1000, STEPS), ScriptedModel("target", 4000, STEPS)
    app = create_app(build_graph([draft, target], AlwaysDraftGate()), tiers=[draft, target])

    async def scenario():
        async with app.router.lifespan_context(app), \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            await asyncio.to_thread(draft.entered.wait, 30)
            before = await client.get("/ready")
            live = await client.get("/health")
            draft.release.set()
            for _ in range(100):
                after = await client.get("/ready")
                if after.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            return before, live, after

    before, live, after = asyncio.run(scenario())
    assert before.status_code == 503 and before.json()["status"] == "warming up"
    assert live.status_code == 200
    assert after.status_code == 200 and [t["model"] for t in after.json()["tiers"]] == ["draft", "target"]
    assert len(target.calls) == 1  # the target tier answered its warm-up step too


def test_metrics_count_requests_steps_and_the_queue():
    draft = HeldModel("draft", 1000, STEPS)
    app = draft_app(draft, 1)

    async def scenario():
        async with first_held(app, draft) as (client, first):
            second = asyncio.create_task(client.post("/v1/chat/completions", json=QUESTION))
            await asyncio.sleep(0.2)
            during = (await client.get("/metrics")).text
            draft.release.set()
            await first, await second
            return during, await client.get("/metrics")

    during, after = asyncio.run(scenario())
    assert "stepgraph_requests_running 1.0" in during and "stepgraph_requests_queued 1.0" in during
    text = after.text
    assert after.headers["content-type"].startswith("text/plain")
    assert "stepgraph_requests_running 0.0" in text and "stepgraph_requests_queued 0.0" in text
    assert 'stepgraph_steps_total{tier="0"} 6.0' in text  # two answers of three steps
    assert 'stepgraph_answers_total{stop_reason="final_answer"} 2.0' in text
    assert 'stepgraph_http_requests_total{method="POST",path="/v1/chat/completions",status="200"} 2.0' in text
    assert "stepgraph_http_request_duration_seconds_bucket" in text


def test_request_ids_are_returned_and_logged_with_the_latency(caplog):
    app = create_app(build_graph([ScriptedModel("draft", 1000, STEPS), ScriptedModel("target", 4000, STEPS)],
                                 AlwaysDraftGate()))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            given = await client.post("/v1/chat/completions", json=QUESTION, headers={"x-request-id": "lb-1234"})
            made = await client.get("/health")
            bad = await client.get("/health", headers={"x-request-id": "no spaces allowed\n"})
            return given, made, bad

    with caplog.at_level("INFO", logger="stepgraph.serve.access"):
        given, made, bad = asyncio.run(scenario())
    assert given.headers["x-request-id"] == "lb-1234"
    assert len(made.headers["x-request-id"]) == 32 and bad.headers["x-request-id"] != "no spaces allowed\n"
    lines = [r.getMessage() for r in caplog.records if r.name == "stepgraph.serve.access"]
    assert len(lines) == 3 and lines[0].startswith("POST /v1/chat/completions 200 ") and lines[0].endswith(" ms")


def test_429_has_retry_after_and_streams_are_admitted_once_without_a_race():
    draft = SlowModel("draft", 1000, STEPS)
    app = draft_app(draft, 1)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app", timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=QUESTION | {"stream": True})
                                          for _ in range(8)))

    responses = asyncio.run(scenario())
    refused = [r for r in responses if r.status_code == 429]
    streamed = [r for r in responses if r.status_code == 200]
    assert len(refused) == 6 and len(streamed) == 2
    assert all(r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error" for r in refused)
    for response in streamed:  # no 200 with a rate-limit error inside
        events = _data_events(response.text)
        assert events[-1] == "[DONE]" and '"error"' not in response.text
    assert app.state.admission.admitted == 0  # every ticket released exactly once


def test_big_bodies_get_413_before_they_are_read_and_cors_is_opt_in():
    graph = build_graph([ScriptedModel("draft", 1000, STEPS), ScriptedModel("target", 4000, STEPS)], AlwaysDraftGate())
    app = create_app(graph, max_body_bytes=1000, cors_origins=["https://ui.example"])
    plain = create_app(graph)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            big = await client.post("/v1/chat/completions", content=b"x" * 5000,
                                    headers={"content-type": "application/json"})
            preflight = await client.options("/v1/chat/completions", headers={
                "origin": "https://ui.example", "access-control-request-method": "POST",
                "access-control-request-headers": "authorization"})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=plain), base_url="http://app") as client:
            no_cors = await client.get("/health", headers={"origin": "https://ui.example"})
        return big, preflight, no_cors

    big, preflight, no_cors = asyncio.run(scenario())
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://ui.example"
    assert "access-control-allow-origin" not in no_cors.headers


class HonouringModel(ScriptedModel):
    """Generates at most ``max_tokens`` tokens of its scripted step, as a real model does."""

    def generate_step(self, question, steps, *, max_tokens=64, **kwargs):
        self.limits = [*getattr(self, "limits", []), max_tokens]
        out = super().generate_step(question, steps, max_tokens=max_tokens, **kwargs)
        tokens = out.tokens[:max_tokens]
        return out.__class__(**{**out.__dict__, "text": "".join(tokens).strip(), "tokens": tokens,
                                "max_logits": out.max_logits[:max_tokens], "top_logprobs": out.top_logprobs[:max_tokens],
                                "generated_tokens": len(tokens)})


def test_max_tokens_is_a_hard_cap_on_generated_tokens():
    draft = HonouringModel("draft", 1000, STEPS)  # steps of 6, 6 and 11 tokens
    app = draft_app(draft)
    body = post(app, QUESTION | {"max_tokens": 10}).json()
    assert draft.limits == [10, 4]  # the second step gets only what the first left
    assert body["usage"]["completion_tokens"] == 10 and body["choices"][0]["finish_reason"] == "length"
    assert body["stepgraph"]["stop_reason"] == "max_tokens"
    streamed = post(app, QUESTION | {"max_completion_tokens": 7, "stream": True})
    final = json.loads(_data_events(streamed.text)[-2])
    assert final["usage"]["completion_tokens"] == 7 and final["choices"][0]["finish_reason"] == "length"


def test_a_stream_still_running_at_shutdown_ends_with_an_error_event():
    from sse_starlette.sse import AppStatus

    draft = HeldModel("draft", 1000, STEPS)
    app = draft_app(draft, 0, shutdown_grace=2.0)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app", timeout=30) as client:
            stream = asyncio.create_task(client.post("/v1/chat/completions", json=QUESTION | {"stream": True}))
            await asyncio.to_thread(draft.entered.wait, 30)
            AppStatus.should_exit = True  # what uvicorn's SIGTERM sets
            try:
                return await stream
            finally:
                AppStatus.should_exit = False
                draft.release.set()

    response = asyncio.run(scenario())
    events = _data_events(response.text)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "server_shutting_down"
    assert app.state.admission.admitted == 0
