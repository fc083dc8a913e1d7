"""`stepgraph throughput` on the transformers backend (vLLM is measured in BENCHMARKS.md, not here)."""

import json

import pytest

from stepgraph.cli import main

pytestmark = pytest.mark.slow  # the shipped models over several problems and batch sizes


def test_throughput_rows_and_batching_does_not_change_the_work(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["throughput", "--backend", "transformers", "--batch", "1", "3", "--problems", "3", "--json-out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["backend"], r["batch"]) for r in rows] == [("transformers", 1), ("transformers", 3)]
    assert rows[0]["steps"] == rows[1]["steps"] >= 6  # greedy: the same steps at any batch size
    assert rows[1]["speedup"] == round(rows[1]["steps_per_second"] / rows[0]["steps_per_second"], 2)  # against batch 1
    assert all(r["steps_per_second"] > 0 and r["call_latency_ms_p50"] > 0 for r in rows)
    assert "| transformers | 3 |" in capsys.readouterr().out
