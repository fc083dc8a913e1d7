"""The test suite's own promises: modules that need optional extras skip cleanly without them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Collect the vLLM server tests in a fresh interpreter where the openai extra cannot be imported.
WITHOUT_OPENAI = """
import sys
sys.modules["openai"] = None  # import openai now raises ModuleNotFoundError, as when it is not installed
sys.modules["langchain_openai"] = None
import pytest
sys.exit(pytest.main(["-q", "-rs", "-p", "no:cacheprovider", "--noconftest", "tests/test_vllm_server.py"]))
"""


def test_vllm_server_tests_skip_without_the_openai_extra():
    done = subprocess.run([sys.executable, "-c", WITHOUT_OPENAI], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    # pytest's exit code 5: nothing ran because the module was skipped; a collection error is 2.
    assert done.returncode == 5, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 skipped" in done.stdout and "the openai extra is not installed" in done.stdout
