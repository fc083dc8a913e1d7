"""The graph ``langgraph.json`` serves is cheap to import: its models load on the first run, once."""

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

from scripted import ScriptedModel

from stepgraph.integrations.studio import LazyStepModel

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_served_graph_loads_no_model():
    probe = ("import sys, graphs.router as r; r.graph.get_graph(); "  # building and drawing it, as Studio does
             "from stepgraph.integrations.studio import _shipped_tiers; "
             "print(all(t._model is None for t in _shipped_tiers()), 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"], out.stderr
    assert out.stderr == ""  # no warning on import either


def test_a_lazy_model_loads_once_under_concurrent_first_calls():
    loads = []

    def load():
        loads.append(threading.get_ident())
        time.sleep(0.05)
        return ScriptedModel("small", 1_000, ["\\boxed{1}"])

    lazy = LazyStepModel("small", load)
    assert lazy.name == "small" and loads == []
    threads = [threading.Thread(target=lazy.generate_step, args=("q", [])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and lazy.n_params == 1_000


def test_a_lazy_model_loads_off_the_event_loop():
    loads = []
    lazy = LazyStepModel("small", lambda: loads.append(threading.get_ident()) or ScriptedModel("small", 1_000, ["x"]))

    async def first_call():
        return threading.get_ident(), (await lazy.agenerate_step("q", [])).text

    loop_thread, text = asyncio.run(first_call())
    assert text == "x" and loads and loads[0] != loop_thread

