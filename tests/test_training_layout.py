"""training/ in subpackages: the flat module paths of earlier releases still import, with a DeprecationWarning."""

import importlib
import subprocess
import sys
import warnings


def test_flat_training_paths_still_import_the_moved_module_with_a_deprecation_warning():
    sys.modules.pop("stepgraph.training.cpo", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("stepgraph.training.cpo")
    assert old is importlib.import_module("stepgraph.training.learning.cpo")
    assert any(issubclass(w.category, DeprecationWarning) and "learning.cpo" in str(w.message) for w in caught)


def test_a_flat_module_path_still_runs_with_python_m():
    done = subprocess.run([sys.executable, "-m", "stepgraph.training.policy_check", "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and "usage: stepgraph policy-check" in done.stdout  # the command its parser moved to
    assert "DeprecationWarning" in done.stderr and "`stepgraph policy-check`" in done.stderr
