"""Every example runs as written (offline)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow  # the shipped models, in a fresh process per example
@pytest.mark.parametrize(("script", "expect"), [
    ("quickstart.py", "answer: 42"),
    ("chat_model_chain.py", "answer: 12"),
    ("agent_tool.py", '"answer": "18"'),
    ("off_domain.py", "off domain signal=on  stick_after=2"),
])
def test_example_runs(script, expect):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout


@pytest.mark.slow
def test_vllm_engine_example_runs(vllm_ready, tmp_path):
    env = dict(os.environ) | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "vllm_engine.py"), "--questions", "4"], cwd=tmp_path,
                          check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if "(expected" in line]
    assert len(rows) == 4 and sum(row.split()[0] == row.split("expected ")[1].split(")")[0] for row in rows) >= 3
    assert "steps in" in done.stdout and not (tmp_path / ".vllm-cache").exists()  # caches went where the fixture said


@pytest.mark.slow
def test_routing_offsets_example_prints_a_frontier_per_routing():
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "routing_offsets.py"), "--problems", "3", "--escalate-to", "likeliest",
                           "next", "--offsets", "0", "3"], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split(" | ")[1:] for line in done.stdout.splitlines() if "three_tier |" in line]
    assert [(r[0], r[1]) for r in rows] == [("likeliest", "0"), ("likeliest", "3"), ("next", "0"), ("next", "3")]
    assert all(0 < float(cell.strip(" |")) for r in rows for cell in r[2:-1])
    coverage, mflops = (float(v) for v in rows[0][-1].strip(" |").split(", "))  # the point calibrate --runs would pick
    assert 0 <= coverage <= 1 and mflops > 0
