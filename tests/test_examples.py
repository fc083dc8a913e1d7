"""Every example runs as written (offline)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(("script", "expect"), [
    ("quickstart.py", "answer: 42"),
    ("chat_model_chain.py", "answer: 12"),
    ("agent_tool.py", '"answer": "18"'),
])
def test_example_runs(script, expect):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout
