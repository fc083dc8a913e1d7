"""The wheel installs exactly one import name, `stepgraph`, and works from a project with its own `graphs`/`training`."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import stepgraph

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True)
    return next(out.glob("stepgraph-*.whl"))


def test_wheel_has_one_top_level_name_and_every_module(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"stepgraph", f"stepgraph-{stepgraph.__version__}.dist-info"}
    expected = {f"stepgraph/{p.relative_to(ROOT / 'stepgraph')}" for p in (ROOT / "stepgraph").rglob("*.py")}
    expected |= {f"stepgraph/training/{p.relative_to(ROOT / 'training')}" for p in (ROOT / "training").rglob("*.py")}
    assert expected <= set(names), sorted(expected - set(names))
    for data in ("stepgraph/py.typed", "stepgraph/testbed/policies/default/policy.json", "stepgraph/testbed/policies/three_tier/policy.json",
                 "stepgraph/testbed/models/draft/model.safetensors"):
        assert data in names


def test_installed_wheel_works_beside_a_users_own_graphs_and_training_packages(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies come from this environment's site-packages (a path line, so its .pth files, among them
    # this checkout's editable install, are not run); stepgraph itself only from the wheel.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    project = tmp_path / "project"
    for package in ("graphs", "training"):  # a user's own packages with the repository's folder names
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text("OWN = True\n")
    question = "Ann has 3 coins. She gets 2 more. She buys 4 more. How many coins does she have?"
    script = (
        "import stepgraph, graphs, training\n"
        "assert graphs.OWN and training.OWN and 'site-packages' in stepgraph.__file__\n"
        "from stepgraph import ChatStepRouter\n"
        f"print(ChatStepRouter(seed=0).invoke({question!r}).response_metadata['answer'])\n"
    )
    done = subprocess.run([str(python), "-c", script], cwd=project, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    from stepgraph import ChatStepRouter

    here = ChatStepRouter(seed=0).invoke(question).response_metadata["answer"]  # the checkout's models and policy
    assert here and done.stdout.strip() == here  # the wheel ships the same models and policy, so the same answer
    cli = subprocess.run([str(venv / "bin" / "stepgraph"), "train", "--help"], cwd=project, capture_output=True, text=True, check=False)
    assert cli.returncode == 0 and "--store" in cli.stdout
