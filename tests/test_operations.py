"""The operator's pieces around the HTTP servers: request ids, access log, metrics, readiness, the body guard."""

import asyncio
import json
import logging

import pytest

pytest.importorskip("prometheus_client")
from stepgraph.integrations.operations import Metrics, Readiness, RequestIdFilter, RequestLog, ServerGuard


def _app(log: list, body_reads: list):
    async def app(scope, receive, send):
        while True:  # read the whole body, as a JSON endpoint would
            message = await receive()
            body_reads.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        logging.getLogger("stepgraph.serve").warning("inside the handler")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def _call(app, path="/v1/chat/completions", headers=(), chunks=(b"{}",)):
    """Drive an ASGI app with a POST whose body arrives in ``chunks``; returns (status, headers, body)."""
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(k.encode(), v.encode()) for k, v in headers]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_request_id_is_kept_when_sane_generated_otherwise_and_on_every_log_line(caplog):
    metrics, reads = Metrics(), []
    app = RequestLog(_app([], reads), metrics)
    handler_filter = RequestIdFilter()
    caplog.handler.addFilter(handler_filter)
    with caplog.at_level(logging.INFO, logger="stepgraph"):
        _, headers, _ = _call(app, headers=[("x-request-id", "lb-1234")])
    assert headers["x-request-id"] == "lb-1234"
    lines = [(r.name, r.request_id, r.getMessage()) for r in caplog.records]
    assert ("stepgraph.serve", "lb-1234", "inside the handler") in lines
    access = [m for name, rid, m in lines if name == "stepgraph.serve.access" and rid == "lb-1234"]
    assert access and access[0].startswith("POST /v1/chat/completions 200 ") and access[0].endswith(" ms")
    for bad in ("", "x" * 200, "a b", "é"):
        _, headers, _ = _call(app, headers=[("x-request-id", bad)] if bad else [])
        assert headers["x-request-id"] != bad and len(headers["x-request-id"]) == 32


def test_metrics_count_requests_by_status_and_runs_by_tier():
    metrics = Metrics()
    app = RequestLog(_app([], []), metrics)
    _call(app)
    _call(app, path="/some/unknown/path")
    metrics.observe_run({"steps": [{"tier": 0}, {"tier": 1}, {"tier": 0}], "escalations": 1,
                         "costs": {"0": {"flops": 10.0}, "1": {"flops": 90.0}}, "stop_reason": "final_answer"})
    text, content_type = metrics.render()
    text = text.decode()
    assert content_type.startswith("text/plain")
    assert 'stepgraph_http_requests_total{method="POST",path="/v1/chat/completions",status="200"} 1.0' in text
    assert 'path="other"' in text  # unknown paths share one label value
    assert 'stepgraph_steps_total{tier="0"} 2.0' in text and 'stepgraph_steps_total{tier="1"} 1.0' in text
    assert 'stepgraph_generated_flops_total{tier="1"} 90.0' in text and "stepgraph_escalations_total 1.0" in text
    assert "stepgraph_http_request_duration_seconds_bucket" in text and "stepgraph_requests_queued" in text


def test_the_key_is_checked_before_the_body_is_read():
    reads = []
    guard = ServerGuard(_app([], reads), api_key="k", max_body_bytes=1000)
    status, headers, body = _call(guard, headers=[("content-length", str(60_000_000))], chunks=[b"x" * 100] * 5)
    assert status == 401 and reads == [] and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert headers["www-authenticate"] == "Bearer"
    status, _, _ = _call(guard, path="/health")  # liveness stays open
    assert status == 200
    status, _, _ = _call(guard, headers=[("authorization", "Bearer k")])
    assert status == 200


def test_bodies_over_the_limit_get_413_by_length_or_while_streaming():
    reads = []
    guard = ServerGuard(_app([], reads), api_key=None, max_body_bytes=1000)
    status, _, body = _call(guard, headers=[("content-length", "5000")])
    assert status == 413 and reads == [] and "1000 bytes" in json.loads(body)["error"]["message"]
    status, _, _ = _call(guard, chunks=[b"x" * 400] * 10)  # chunked: no Content-Length
    assert status == 413 and sum(reads) <= 1000
    status, _, _ = _call(guard, chunks=[b"x" * 400, b"x" * 400])
    assert status == 200


def test_ready_only_after_every_tier_answered_a_warm_up_step():
    class Tier:
        def __init__(self, fail=False):
            self.name, self.fail, self.calls = "t", fail, 0

        def generate_step(self, question, steps, **kwargs):
            self.calls += 1
            if self.fail:
                raise RuntimeError("weights missing")

    ready = Readiness()
    assert ready.body()[0] == 503 and ready.body()[1]["status"] == "warming up"
    tiers = [Tier(), Tier()]
    asyncio.run(ready.warm_up(tiers))
    assert ready.body()[0] == 200 and [t.calls for t in tiers] == [1, 1]
    broken = Readiness()
    asyncio.run(broken.warm_up([Tier(), Tier(fail=True)]))
    status, body = broken.body()
    assert status == 503 and body["status"] == "failed" and "weights missing" in body["error"]
