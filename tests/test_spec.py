"""The run spec: validation errors name the file and field; splits by question hash; example specs load."""

from pathlib import Path

import pytest
from stepgraph.training.collection.collect import Item
from stepgraph.training.data.splits import split_items
from stepgraph.training.spec import load_spec

from stepgraph.errors import ConfigError, DataError

EXAMPLES = Path(__file__).parent.parent / "examples"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


TWO_SERVERS = """
[[tiers]]
kind = "server"
base_url = "http://127.0.0.1:1/v1"
model = "small"
n_params = 1000
[[tiers]]
kind = "server"
model = "big"
n_params = 5000
"""


def test_a_missing_field_is_named_with_the_file(tmp_path):
    path = _write(tmp_path, TWO_SERVERS)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and "tiers.1.server.base_url" in str(err.value)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('[verifier]\nkind = "rollout"\nk = 2\nm = 3\n', "verifier"),
        ('[data]\nsource = "gsm8k"\n', "data"),
        ('alpha = 1.5\n', "alpha"),
        ('[sampling]\ntemperture = 0.5\n', "sampling.temperture"),
        ('[data]\nsource = "testbed"\nsplits = { train = 0.5, test = 10 }\n', "data"),
    ],
)
def test_bad_values_are_named(tmp_path, extra, field):
    text = TWO_SERVERS.replace('model = "big"', 'base_url = "http://127.0.0.1:2/v1"\nmodel = "big"')
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_spec(_write(tmp_path, extra + text if not extra.startswith("[") else text + extra))


def test_an_api_tier_needs_its_parameter_count_and_never_holds_the_key(tmp_path, monkeypatch):
    path = _write(tmp_path, '[[tiers]]\nkind = "transformers"\npath = "d"\n[[tiers]]\nkind = "openai"\nmodel = "gpt-4.1-mini"\n')
    with pytest.raises(ConfigError, match="n_params"):
        load_spec(path)
    path.write_text(path.read_text() + 'n_params = 8000000000\napi_key_env = "MY_TEST_KEY"\n')
    spec = load_spec(path)
    monkeypatch.delenv("MY_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_TEST_KEY"):
        spec.tiers[1].build()
    monkeypatch.setenv("MY_TEST_KEY", "sk-secret-value")
    model = spec.tiers[1].build()
    assert model.name == "gpt-4.1-mini" and model.n_params == 8_000_000_000
    assert "sk-secret-value" not in repr(spec) and "sk-secret-value" not in repr(model.chat_model)


def test_example_specs_load():
    testbed = load_spec(EXAMPLES / "testbed.toml")
    assert [t.kind for t in testbed.tiers] == ["transformers", "transformers"] and testbed.verifier.kind == "testbed"
    vllm = load_spec(EXAMPLES / "qwen_vllm_gsm8k.toml")
    assert vllm.verifier.kind == "rollout" and vllm.describe_tiers()[0]["features"] == ["logit_confidence"]
    gpt = load_spec(EXAMPLES / "qwen_gpt41mini.toml")
    assert gpt.tiers[1].kind == "openai" and gpt.verifier.kind == "judge"


def test_the_testbed_spec_builds_the_shipped_pair_and_its_split(tmp_path):
    text = (EXAMPLES / "testbed.toml").read_text().replace('path = "stepgraph/', f'path = "{Path(__file__).parent.parent}/stepgraph/')
    spec = load_spec(_write(tmp_path, text))
    tiers = spec.build_tiers()
    assert [t.name for t in tiers] == ["draft", "target"]
    assert [d["parameters"] for d in spec.describe_tiers(tiers)] == [t.n_params for t in tiers]
    assert len(spec.items("calibration")) == 100 and spec.items("test")[0].problem_id == "test:0:0"


def _items(n: int) -> list[Item]:
    return [Item(f"q{i}", f"question {i}", str(i)) for i in range(n)]


def test_hash_splits_are_disjoint_order_free_and_stable_as_the_data_grows():
    items = _items(500)
    fractions = {"train": 0.6, "calibration": 0.2, "test": 0.2}
    splits = split_items(items, fractions)
    assert sum(map(len, splits.values())) == 500 and 60 <= len(splits["test"]) <= 140
    questions = [{i.question for i in s} for s in splits.values()]
    assert not (questions[0] & questions[1]) and not (questions[1] & questions[2]) and not (questions[0] & questions[2])
    assert split_items(list(reversed(items)), fractions)["test"] == splits["test"]
    grown = split_items(items + _items(700)[500:], fractions)
    assert {i.question for i in splits["test"]} <= {i.question for i in grown["test"]}
    assert split_items(items, fractions, seed=1)["test"] != splits["test"]
    sized = split_items(items, {"train": 10, "calibration": 5, "test": 5})
    assert [len(v) for v in sized.values()] == [10, 5, 5]
    with pytest.raises(ConfigError, match="600"):
        split_items(items, {"train": 600})


def test_a_generic_jsonl_names_its_fields(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1?", "target": "$2$"}\n{"prompt": "2+2?", "target": "4"}\n')
    path = _write(tmp_path, TWO_SERVERS.replace('model = "big"', 'base_url = "http://127.0.0.1:2/v1"\nmodel = "big"')
                  + f'[data]\nsource = "jsonl"\npath = "{data}"\nquestion_field = "prompt"\nanswer_field = "target"\n'
                  'splits = { test = 2 }\n[verifier]\nkind = "rollout"\n')
    items = load_spec(path).items("test")
    assert sorted((i.question, i.reference) for i in items) == [("1+1?", "2"), ("2+2?", "4")]
    bad = load_spec(path).model_copy(update={"data": load_spec(path).data.model_copy(update={"question_field": "q"})})
    with pytest.raises(ValueError, match="question_field"):
        bad.items("test")


def test_the_judge_verifier_is_built_from_the_spec_with_greedy_verdicts(monkeypatch):
    from stepgraph.training.collection.verifiers import JUDGE_PROMPT, JudgeVerifier

    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-a-real-key")
    spec = load_spec(EXAMPLES / "qwen_gpt41mini.toml")
    judge = spec.build_verifier([])
    assert isinstance(judge, JudgeVerifier) and judge.prompt == JUDGE_PROMPT
    assert (judge.model.model_name, judge.model.temperature) == ("gpt-4o-mini", 0.0)
    assert "sk-not-a-real-key" not in repr(judge.model)


def _jsonl_spec(tmp_path: Path, *lines: str, extra: str = "") -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f"{line}\n" for line in lines))
    return _write(tmp_path, TWO_SERVERS.replace('model = "big"', 'base_url = "http://127.0.0.1:2/v1"\nmodel = "big"')
                  + f'[data]\nsource = "jsonl"\npath = "{data}"\nsplits = {{ test = 1 }}\n{extra}[verifier]\nkind = "rollout"\n')


BAD_DATA = ('{"id": "a", "question": "1+1?", "answer": "2"}', '{"id": "b", "question": "2+2?", "answer": null}')


def test_a_binary_run_spec_is_a_one_line_error(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(ConfigError, match=r"run\.toml: not UTF-8 text .*TOML text file"):
        load_spec(path)
    path.write_bytes(b"\xef\xbb\xbf" + (EXAMPLES / "testbed.toml").read_bytes())  # a BOM at the start is harmless
    assert load_spec(path).data.source == "testbed"


def test_bad_data_rows_are_refused_or_skipped_with_data_skip_bad_rows(tmp_path, capsys):
    with pytest.raises(DataError, match=r"d\.jsonl line 2: has 'answer' = null"):
        load_spec(_jsonl_spec(tmp_path, *BAD_DATA)).items("test")
    items = load_spec(_jsonl_spec(tmp_path, *BAD_DATA, extra="skip_bad_rows = true\n")).items("test")
    assert [i.problem_id for i in items] == ["a"]
    assert "skipped 1 bad row of" in capsys.readouterr().err


def test_the_cli_gives_data_and_spec_errors_one_line_and_exit_2(tmp_path, capsys):
    from stepgraph.cli import main

    spec = _jsonl_spec(tmp_path, *BAD_DATA)
    assert main(["collect", "--config", str(spec), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "d.jsonl line 2: has 'answer' = null" in err and "--skip-bad-rows" in err
    (tmp_path / "bin.toml").write_bytes(b"\x00\xff")
    assert main(["evaluate", "--config", str(tmp_path / "bin.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bin.toml: not UTF-8" in err
    (tmp_path / "d.csv").write_text("question,answer\n")
    assert main(["collect", "--config", str(_write(tmp_path, spec.read_text().replace("d.jsonl", "d.csv"))), "--split", "test"]) == 2
    assert "d.csv: cannot read .csv files; data files are .jsonl" in capsys.readouterr().err


def test_skip_bad_rows_flag_reaches_the_spec(tmp_path, capsys):
    from stepgraph.cli import build_parser
    from stepgraph.cli.training import _spec

    spec = _jsonl_spec(tmp_path, *BAD_DATA)
    for command in ("collect", "evaluate", "bench", "calibrate"):
        args = build_parser(offline=True).parse_args([command, "--config", str(spec), "--skip-bad-rows"])
        assert [i.problem_id for i in _spec(args).items("test")] == ["a"]
    assert capsys.readouterr().err.count("skipped 1 bad row of") == 4
