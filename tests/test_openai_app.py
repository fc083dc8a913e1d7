"""The OpenAI-compatible app in-process (no socket) on scripted models: admission, limits, error bodies."""

import asyncio
import dataclasses
import threading

import httpx
import pytest
from scripted import ScriptedModel

from stepgraph.cli import main
from stepgraph.context import SERVER_LIMITS
from stepgraph.gates import AlwaysDraftGate
from stepgraph.graph import build_graph
from stepgraph.integrations.openai import create_app

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


def post(app, body):
    async def go():
        # as uvicorn does: the app's 500 response goes out, the exception is re-raised only to the server's log
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post("/v1/chat/completions", json=body)

    return asyncio.run(go())


def test_requests_past_the_concurrency_limit_get_429_and_the_slot_is_released():
    draft = HeldModel("draft", 1000, STEPS)
    app = create_app(build_graph([draft, ScriptedModel("target", 4000, STEPS)], AlwaysDraftGate()),
                     limits=dataclasses.replace(SERVER_LIMITS, max_concurrent=1, max_queued=0))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", json=QUESTION))
            await asyncio.to_thread(draft.entered.wait, 30)
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
