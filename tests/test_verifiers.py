"""Step verifiers: the exact testbed one and the LLM-judge interface."""

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from pydantic import Field
from stepgraph.training.collection.verifiers import JudgeVerifier, TestbedVerifier, parse_verdict

from stepgraph.testbed import testbed_task as shipped_task


def test_testbed_verifier_knows_its_problems_only():
    problem = shipped_task().generate("test", 1, seed=0)[0]
    verifier = TestbedVerifier([problem])
    assert verifier.verify(problem.question, str(problem.answer), [], problem.steps[0]) is True
    assert verifier.verify(problem.question, str(problem.answer), [], "1+1=3") is False
    assert verifier.verify("another question", "1", [], "1+1=2") is None


class RecordingChat(FakeListChatModel):
    """A scripted chat model that keeps the prompts it was sent."""

    prompts: list = Field(default_factory=list)

    def _call(self, messages, stop=None, run_manager=None, **kwargs):
        self.prompts.append(messages[-1].content)
        return super()._call(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_judge_verifier_sends_the_papers_prompt_and_reads_its_verdict():
    chat = RecordingChat(responses=["correct", "Incorrect.", "The step is correct.", "I cannot tell"], prompts=[])
    judge = JudgeVerifier(chat)
    assert judge.verify("What is 1+1?", "2", ["1+0=1"], "1+1=2") is True
    assert judge.verify("q", "2", [], "1+1=3") is False  # "incorrect" contains "correct": must not read as correct
    assert judge.verify("q", "2", [], "1+1=2") is True
    assert judge.verify("q", "2", [], "1+1=?") is None
    first = chat.prompts[0]
    assert first.startswith("Determine whether the final step is correct for the given problem.")
    assert "correct or incorrect" in first and "do not explain" in first
    assert "What is 1+1?" in first and "1+0=1" in first and first.rstrip().endswith("Verdict (correct | incorrect):")
    assert first.index("1+0=1") < first.index("1+1=2")  # previous steps, then the final step


def test_parse_verdict():
    assert parse_verdict("INCORRECT") is False
    assert parse_verdict("correct") is True
    assert parse_verdict("yes") is None
