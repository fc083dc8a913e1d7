"""Step verifiers: the exact testbed one and the LLM-judge interface."""

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from stepgraph.training.verifiers import JudgeVerifier, TestbedVerifier

from stepgraph.testbed import task


def test_testbed_verifier_knows_its_problems_only():
    problem = task.generate("test", 1, seed=0)[0]
    verifier = TestbedVerifier([problem])
    assert verifier.verify(problem.question, str(problem.answer), [], problem.steps[0]) is True
    assert verifier.verify(problem.question, str(problem.answer), [], "1+1=3") is False
    assert verifier.verify("another question", "1", [], "1+1=2") is None


def test_judge_verifier_reads_the_models_verdict():
    judge = JudgeVerifier(FakeListChatModel(responses=["Yes, it is correct.", "No.", "I cannot tell"]))
    assert judge.verify("q", "2", ["1+0=1"], "1+1=2") is True
    assert judge.verify("q", "2", [], "1+1=3") is False
    assert judge.verify("q", "2", [], "1+1=?") is None
