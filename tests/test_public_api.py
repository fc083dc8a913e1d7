"""`import stepgraph` is the user surface: every advertised name resolves, lazily."""

import subprocess
import sys

import stepgraph


def test_every_public_name_resolves():
    for name in stepgraph.__all__:
        assert getattr(stepgraph, name) is not None, name
    assert stepgraph.__version__[0].isdigit()


def test_unknown_name_is_an_attribute_error():
    try:
        stepgraph.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_lazy():
    """Importing the package loads neither torch nor transformers nor langgraph."""
    code = "import sys, stepgraph; print(sorted(m for m in ('torch', 'transformers', 'langgraph') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_quickstart_is_three_imports_from_the_top_level():
    from stepgraph import RouterContext, build_graph, load_pair, resolve_gate

    graph = build_graph(load_pair(), resolve_gate("draft"))
    result = graph.invoke({"question": "Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?"},
                          context=RouterContext(seed=0))
    assert result["stop_reason"] == "final_answer" and all(step["tier"] == 0 for step in result["steps"])
