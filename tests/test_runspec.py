"""The run spec's runtime half (stepgraph.runspec): serving and solving read a full run spec without training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import stepgraph.training.collection.collect
import stepgraph.training.spec

from stepgraph import runspec
from stepgraph.errors import ConfigError
from stepgraph.runspec import RuntimeSpec, load_runtime_spec

REPO = Path(__file__).parent.parent
EXAMPLES = REPO / "examples"


def test_a_full_run_spec_loads_for_serving_with_its_training_tables_left_to_training():
    spec = load_runtime_spec(EXAMPLES / "testbed.toml")  # data, verifier, alpha, collect, paths.store / bench: training's
    assert type(spec) is RuntimeSpec and [t.kind for t in spec.tiers] == ["transformers", "transformers"]
    assert spec.paths.gate == Path("runs/testbed/gate") and spec.collect.feature == "api_confidence"
    assert not hasattr(spec, "data") and not hasattr(spec, "verifier")
    assert stepgraph.training.spec.load_spec(EXAMPLES / "testbed.toml").context() == spec.context()  # the same runtime half


def test_a_misspelt_table_is_still_refused_by_the_runtime_loader(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text((EXAMPLES / "testbed.toml").read_text() + '\n[sampelng]\nseed = 1\n')
    with pytest.raises(ConfigError, match=r"run\.toml: sampelng: Extra inputs are not permitted"):
        load_runtime_spec(path)
    path.write_text((EXAMPLES / "testbed.toml").read_text().replace('name = "policy"', 'name = "policy"\nthreshhold = 1.0'))
    with pytest.raises(ConfigError, match=r"run\.toml: gate\.threshhold"):
        load_runtime_spec(path)


def test_training_still_checks_the_tables_the_runtime_leaves(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text((EXAMPLES / "testbed.toml").read_text().replace('bench = "runs/testbed/bench"', 'bench = "b"\nstroe = "x"'))
    load_runtime_spec(path)  # paths.stroe is training's to judge
    with pytest.raises(ConfigError, match=r"run\.toml: paths\.stroe: Extra inputs are not permitted"):
        stepgraph.training.spec.load_spec(path)


def test_the_former_names_still_import_from_training():
    for name in ("TransformersTier", "VLLMTier", "ServerTier", "OpenAITier", "PriceSpec", "GateSpec", "SamplingSpec", "chat_model"):
        assert getattr(stepgraph.training.spec, name) is getattr(runspec, name)
    from stepgraph.training.data.records import Item

    assert stepgraph.training.collection.collect.Item is Item
    assert issubclass(stepgraph.training.spec.RunSpec, RuntimeSpec)


@pytest.mark.slow  # loads the shipped pair
def test_the_server_builds_a_run_specs_graph_without_importing_training(tmp_path):
    text = (EXAMPLES / "testbed.toml").read_text().replace('name = "policy"', 'name = "draft"')
    path = tmp_path / "run.toml"
    path.write_text(text)
    code = ("import json, sys; from pathlib import Path; from stepgraph.integrations.openai.app import load_graph; "
            f"load_graph(Path({str(path)!r})); print(json.dumps([m for m in sys.modules if m.startswith('stepgraph.training')]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_runtime_loader_leaves_exactly_the_tables_training_adds():
    added = set(stepgraph.training.spec.RunSpec.model_fields) - set(RuntimeSpec.model_fields)
    assert added == set(runspec.TRAINING_TABLES)


def test_the_former_load_gate_still_builds_the_specs_gate_with_a_deprecation_warning():
    import pytest
    from stepgraph.training.calibration.calibrate import load_gate

    from stepgraph.routing.gates import AlwaysDraftGate

    class Spec:
        def build_gate(self, tiers):
            return AlwaysDraftGate()

    with pytest.warns(DeprecationWarning, match="spec.build_gate"):
        assert isinstance(load_gate(Spec(), None), AlwaysDraftGate)
