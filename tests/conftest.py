import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # CI has 2 cores; vLLM-style servers started by fixtures need the other


@pytest.fixture(scope="session")
def vllm_ready(request: pytest.FixtureRequest) -> None:
    """vLLM is importable and its caches go to pytest's cache folder (kept between sessions).

    Without vLLM the real-vLLM tests skip, except where STEPGRAPH_REQUIRE_VLLM=1 (CI) makes that a failure.
    """
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("STEPGRAPH_REQUIRE_VLLM") == "1":
            pytest.fail("STEPGRAPH_REQUIRE_VLLM=1 but vLLM is not installed; see the README's test command.")
        pytest.skip('vLLM is not installed (pip install ".[vllm]", see the README)')
    from stepgraph.testbed.vllm_serving import configure_environment

    configure_environment(request.config.cache.mkdir("vllm"))


@pytest.fixture(scope="module")
def servers(vllm_ready, tmp_path_factory):
    """vLLM OpenAI-compatible servers for the shipped draft (raw logits) and target (log-probs), one pair per module."""
    from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR
    from stepgraph.testbed.vllm_serving import serve

    logs = tmp_path_factory.mktemp("vllm-logs")
    with contextlib.ExitStack() as stack:
        draft = stack.enter_context(serve(DRAFT_MODEL_DIR, name="draft", log=stack.enter_context(open(logs / "draft.log", "wb"))))
        target = stack.enter_context(serve(TARGET_MODEL_DIR, name="target", logprobs_mode="raw_logprobs",
                                           log=stack.enter_context(open(logs / "target.log", "wb"))))
        yield {"draft": draft, "target": target}
