"""The out-of-domain signal: scoring, in_domain in the state and every output, routing, artifacts, backends."""

import asyncio
import dataclasses
import json
import logging
import math
import types

import pytest
from scripted import ScriptedModel

from stepgraph.artifacts.policy import load_policy
from stepgraph.context import RouterContext
from stepgraph.domain import Domain
from stepgraph.errors import ModelOutputError, PolicyFileError
from stepgraph.graph import build_graph
from stepgraph.integrations.chat_model import ChatStepRouter
from stepgraph.integrations.mcp_server import routed_answer
from stepgraph.integrations.openai.protocol import routing_details
from stepgraph.models.base import QuestionScore, question_span
from stepgraph.models.chat import ChatStepModel
from stepgraph.routing.gates import AlwaysDraftGate, AlwaysTargetGate, PolicyGate
from stepgraph.routing.gates.calibrated import load_gate_artifact
from stepgraph.testbed import testbed_task as shipped_task
from stepgraph.testbed.defaults import DEFAULT_POLICY_DIR

STEPS = ["1+1=2", "2+2=4", "\\boxed{4}"]
USUAL, UNUSUAL = "What is 1+1+2?", "Write a poem about the sea."
DOMAIN = Domain(tier=1, threshold=-5.0, questions=100)


class ScoredModel(ScriptedModel):
    """A scripted target that scores the usual question -2 and anything else -9 (or as ``score`` says)."""

    def __init__(self, score=None) -> None:
        super().__init__("target", 4000, STEPS)
        self.score, self.scored = score, []

    def question_logprob(self, question):
        self.scored.append(question)
        if self.score is not None:
            return self.score(question)
        return QuestionScore(-2.0 if question == USUAL else -9.0, question_tokens=5, prompt_tokens=20)


def _graph(target=None, domain=DOMAIN, gate=None):
    gate = gate or AlwaysTargetGate()  # escalates every draft: a draft paid for is visible in the costs
    gate.domain = domain
    return build_graph([ScriptedModel("draft", 1000, STEPS), target or ScoredModel()], gate)


def test_an_out_of_domain_question_is_written_by_the_strongest_tier_with_no_draft():
    target = ScoredModel()
    result = _graph(target).invoke({"question": UNUSUAL})
    assert result["in_domain"] is False and target.scored == [UNUSUAL]
    assert [s["tier"] for s in result["steps"]] == [1, 1, 1] and not any(s["escalated"] for s in result["steps"])
    assert set(result["costs"]) == {"1"}  # no draft was paid for
    scoring = 2.0 * 4000 * 20  # the question's prefill, counted once, in prefill FLOPs
    assert result["costs"]["1"]["calls"] == 4 and result["costs"]["1"]["prefill_flops"] >= scoring


def test_an_in_domain_question_routes_as_without_the_signal_and_pays_for_the_scoring():
    on, off = (_graph(domain=d).invoke({"question": USUAL}) for d in (DOMAIN, None))
    assert on["in_domain"] is True and off["in_domain"] is None
    assert [(s["tier"], s["text"], s["escalated"]) for s in on["steps"]] == [(s["tier"], s["text"], s["escalated"]) for s in off["steps"]]
    assert on["totals"]["flops"] == off["totals"]["flops"]  # scoring generates nothing
    assert on["totals"]["prefill_flops"] == off["totals"]["prefill_flops"] + 2.0 * 4000 * 20
    assert on["costs"]["1"]["calls"] == off["costs"]["1"]["calls"] + 1


def test_async_runs_score_the_question_too():
    result = asyncio.run(_graph().ainvoke({"question": UNUSUAL}))
    assert result["in_domain"] is False and {s["tier"] for s in result["steps"]} == {1}


def _raises(question):
    raise RuntimeError("scorer broke")


@pytest.mark.parametrize(("target", "logged"), [
    (ScriptedModel("target", 4000, STEPS), "has no question_logprob"),
    (ScoredModel(lambda q: None), "did not report"),
    (ScoredModel(_raises), "scorer broke"),
    (ScoredModel(lambda q: QuestionScore(math.nan, 1, 1)), "finite"),
    (ScoredModel(lambda q: -3.0), "not a QuestionScore"),
], ids=["no method", "none", "raises", "nan", "float"])
def test_a_backend_that_cannot_score_leaves_in_domain_unknown_with_a_logged_reason(target, logged, caplog):
    with caplog.at_level(logging.INFO, logger="stepgraph.domain"):
        result = _graph(target).invoke({"question": UNUSUAL})
    assert result["in_domain"] is None and result["stop_reason"] == "final_answer"
    assert result["steps"][0]["tier"] == 1 and result["steps"][0]["escalated"]  # drafted and escalated, as without the signal
    assert logged in caplog.text


def test_a_domain_scored_by_a_tier_the_graph_lacks_is_off(caplog):
    result = _graph(domain=Domain(tier=2, threshold=-5.0, questions=1)).invoke({"question": UNUSUAL})
    assert result["in_domain"] is None and "this graph has 2 tiers" in caplog.text


def test_stick_after_still_applies_to_in_domain_questions():
    result = _graph().invoke({"question": USUAL}, context=RouterContext(stick_after=1))
    assert result["in_domain"] is True and [s["escalated"] for s in result["steps"]] == [True, False, False]


def test_in_domain_reaches_the_servers_the_chat_model_and_the_tool():
    result = _graph().invoke({"question": UNUSUAL})
    assert routing_details(result)["in_domain"] is False
    assert routed_answer(result).in_domain is False
    reply = ChatStepRouter(graph=_graph()).invoke(UNUSUAL)
    assert reply.response_metadata["in_domain"] is False
    from stepgraph.integrations.tool import _summary

    assert _summary(result)["in_domain"] is False and "outside the models' domain" in _summary(result)["note"]


def test_the_openai_app_returns_in_domain_in_the_stepgraph_field():
    import httpx

    from stepgraph.integrations.openai import create_app

    async def ask(question):
        transport = httpx.ASGITransport(app=create_app(_graph()))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            body = {"model": "stepgraph", "messages": [{"role": "user", "content": question}]}
            return (await client.post("/v1/chat/completions", json=body)).json()

    assert asyncio.run(ask(UNUSUAL))["stepgraph"]["in_domain"] is False
    assert asyncio.run(ask(USUAL))["stepgraph"]["in_domain"] is True


def test_an_artifact_without_the_field_loads_with_the_signal_off(tmp_path):
    shipped = load_policy(DEFAULT_POLICY_DIR)
    assert shipped.domain is not None and shipped.domain.tier == 1  # the shipped policy carries one
    dataclasses.replace(shipped, domain=None).save(tmp_path)
    assert "domain" not in json.loads((tmp_path / "policy.json").read_text())  # as every older artifact
    old = PolicyGate.from_path(tmp_path)
    assert old.domain is None and old.threshold == shipped.kappa


def test_a_bad_domain_field_is_refused_naming_it(tmp_path):
    dataclasses.replace(load_policy(DEFAULT_POLICY_DIR), domain=None).save(tmp_path)
    manifest = json.loads((tmp_path / "policy.json").read_text())
    manifest["domain"] = {"tier": 1, "statistic": "mean_question_logprob", "threshold": "low", "percentile": 1.0, "questions": 9}
    (tmp_path / "policy.json").write_text(json.dumps(manifest))
    with pytest.raises(PolicyFileError, match="domain"):
        load_policy(tmp_path)


def test_a_calibrated_gate_directory_carries_its_domain(tmp_path):
    from stepgraph.training.calibration.calibrate import save_gate

    save_gate(tmp_path, "threshold", {"threshold": 0.7, "feature": "api_confidence"}, tiers=[], calibration={}, domain=DOMAIN)
    assert load_gate_artifact(tmp_path).domain == DOMAIN
    save_gate(tmp_path, "threshold", {"threshold": 0.7, "feature": "api_confidence"}, tiers=[], calibration={})
    assert load_gate_artifact(tmp_path).domain is None


def test_question_span_finds_the_question_tokens():
    def tokenizer(text, add_special_tokens=False):
        return {"input_ids": text.split()}

    assert question_span(tokenizer, "<s> user a b c </s> assistant", "a b c") == (2, 5)
    with pytest.raises(ValueError, match="verbatim"):
        question_span(tokenizer, "<s> user x </s>", "a b c")


class _Completions:
    def __init__(self, response=None, error=None):
        self.response, self.error, self.requests = response, error, []

    def create(self, **request):
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return self.response


def _chat(completions):
    chat = types.SimpleNamespace(root_client=types.SimpleNamespace(chat=types.SimpleNamespace(completions=completions)),
                                 model_name="served")
    return ChatStepModel(chat, n_params=10)  # type: ignore[arg-type]


def test_a_vllm_server_scores_the_question_from_its_prompt_logprobs():
    rows = [None, {"7": {"logprob": -0.5, "decoded_token": "<|im_start|>user\n"}},
            {"8": {"logprob": -1.0, "decoded_token": "Two"}}, {"9": {"logprob": -3.0, "decoded_token": " apples"}},
            {"10": {"logprob": -0.1, "decoded_token": "<|im_end|>\n"}}]
    response = types.SimpleNamespace(model_extra={"prompt_logprobs": rows},
                                     usage=types.SimpleNamespace(prompt_tokens=5, completion_tokens=1, prompt_tokens_details=None))
    completions = _Completions(response)
    score = _chat(completions).question_logprob("Two apples")
    assert score == QuestionScore(-2.0, question_tokens=2, prompt_tokens=5, cached_tokens=0, generated_tokens=1)
    assert completions.requests[0]["extra_body"] == {"prompt_logprobs": 0} and completions.requests[0]["max_tokens"] == 1


def test_a_server_without_prompt_logprobs_is_asked_once():
    empty = _Completions(types.SimpleNamespace(model_extra={}, usage=None))
    model = _chat(empty)
    assert model.question_logprob("q") is None and model.question_logprob("q") is None and len(empty.requests) == 1
    refusing = _Completions(error=ValueError("Unrecognized request argument supplied: prompt_logprobs"))
    model = _chat(refusing)
    with pytest.raises(ModelOutputError, match="prompt_logprobs"):
        model.question_logprob("q")
    assert model.question_logprob("q") is None and len(refusing.requests) == 1


def test_a_chat_model_without_an_openai_client_cannot_score():
    assert ChatStepModel(types.SimpleNamespace(), n_params=10).question_logprob("q") is None  # type: ignore[arg-type]


def test_draft_gate_graph_without_domain_never_scores():
    target = ScoredModel()
    result = build_graph([ScriptedModel("draft", 1000, STEPS), target], AlwaysDraftGate()).invoke({"question": UNUSUAL})
    assert result["in_domain"] is None and target.scored == []


# --- on the shipped testbed tiers ----------------------------------------------------------------

OFF_DOMAIN = "What is the capital of France?"


@pytest.fixture(scope="module")
def pair():
    from stepgraph.testbed import load_pair

    return load_pair()


@pytest.mark.slow
def test_the_shipped_target_flags_an_off_domain_question_and_not_test_split_ones(pair):
    from stepgraph.domain import score_question

    domain = load_policy(DEFAULT_POLICY_DIR).domain
    scorer = pair[domain.tier]
    assert score_question(scorer, OFF_DOMAIN).mean_logprob < domain.threshold
    assert all(score_question(scorer, p.question).mean_logprob >= domain.threshold for p in shipped_task().generate("test", 20, seed=5))


@pytest.mark.slow
def test_scoring_keeps_the_prompt_so_the_first_step_prefills_one_token(pair):
    draft, question = pair[0], shipped_task().generate("test", 1, seed=5)[0].question
    score = draft.question_logprob(question)
    step = draft.generate_step(question, [], seed=0)
    assert score.prompt_tokens == step.prompt_tokens - 1 and step.cached_tokens == step.prompt_tokens - 1


@pytest.mark.slow
def test_the_shipped_graph_routes_in_domain_as_before_and_off_domain_on_the_target(pair, tmp_path):
    dataclasses.replace(load_policy(DEFAULT_POLICY_DIR), domain=None).save(tmp_path)  # the artifact as shipped before
    new, old = (build_graph(pair, PolicyGate.from_path(d)) for d in (DEFAULT_POLICY_DIR, tmp_path))
    question = shipped_task().generate("test", 1, seed=5)[0].question
    routed, before = new.invoke({"question": question}), old.invoke({"question": question})
    assert (routed["in_domain"], before["in_domain"]) == (True, None)
    assert [(s["tier"], s["text"]) for s in routed["steps"]] == [(s["tier"], s["text"]) for s in before["steps"]]
    assert routed["totals"]["flops"] == before["totals"]["flops"]
    away = new.invoke({"question": OFF_DOMAIN})
    assert away["in_domain"] is False and {s["tier"] for s in away["steps"]} == {1} and "0" not in away["costs"]


@pytest.mark.slow
def test_solve_prints_one_warning_line_for_an_off_domain_question(capsys):
    from stepgraph.cli import main

    assert main(["solve", OFF_DOMAIN]) == 0
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if "out of domain" in line] == err.strip().splitlines()
    assert len(err.strip().splitlines()) == 1 and "in domain: no" in out
    assert main(["solve", shipped_task().generate("test", 1, seed=5)[0].question, "--json"]) == 0
    out, err = capsys.readouterr()
    assert "out of domain" not in err and json.loads(out)["in_domain"] is True


@pytest.mark.slow
def test_calibrate_domain_only_writes_the_field_and_keeps_kappa_and_weights(tmp_path, capsys):
    from stepgraph.cli import main

    argv = ["calibrate", "--domain-only", "--policy", str(DEFAULT_POLICY_DIR), "--out", str(tmp_path)]
    assert main([*argv, "--runs", "99"]) == 0  # the 1st percentile of fewer than 100 would flag the lowest question itself
    out, err = capsys.readouterr()
    assert json.loads(out)["domain"] is None and "too few" in err and load_policy(tmp_path).domain is None
    assert main([*argv, "--runs", "100"]) == 0
    written = json.loads(capsys.readouterr().out)["domain"]
    fresh, shipped = load_policy(tmp_path), load_policy(DEFAULT_POLICY_DIR)
    assert fresh.domain.model_dump() == written and (fresh.domain.tier, fresh.domain.questions, fresh.domain.percentile) == (1, 100, 1.0)
    assert fresh.kappa == shipped.kappa
    assert (tmp_path / "policy.safetensors").read_bytes() == (DEFAULT_POLICY_DIR / "policy.safetensors").read_bytes()
