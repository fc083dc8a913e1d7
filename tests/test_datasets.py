"""Dataset loaders on small files in the published formats."""

import json

import pytest
from stepgraph.training.datasets import load_dataset_file, normalize_answer


@pytest.mark.parametrize(("raw", "expected"), [("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"), ("1,234", "1234"), (" 72 ", "72"),
                                               ("\\boxed{3, 4}", "3, 4"), ("$x^2$", "x^2")])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_gsm8k_jsonl(tmp_path):
    rows = [{"question": "Natalia sold 48 clips...", "answer": "She sold 48/2 = <<48/2=24>>24.\n#### 1,072"}]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (item,) = load_dataset_file("gsm8k", path)
    assert item.question.startswith("Natalia") and item.reference == "1072" and item.problem_id == "gsm8k:0"


def test_math500_json_and_parquet(tmp_path):
    rows = [
        {"problem": "Compute $1/2+0$.", "solution": "It is $\\boxed{\\frac12}$.", "answer": "\\frac{1}{2}", "subject": "Algebra",
         "level": 1, "unique_id": "test/algebra/1.json"},
        {"problem": "What is 2+2?", "solution": "So $\\boxed{4}$.", "answer": "", "subject": "Prealgebra", "level": 1,
         "unique_id": "test/prealgebra/2.json"},
    ]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    items = load_dataset_file("math500", tmp_path / "m.json")
    assert [i.reference for i in items] == ["\\frac{1}{2}", "4"]  # an empty answer falls back to the boxed solution
    assert items[0].problem_id == "test/algebra/1.json"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert load_dataset_file("math500", tmp_path / "m.parquet") == items


def test_omnimath_wrapped_json(tmp_path):
    rows = {"data": [{"problem": "Find n.", "solution": "...", "answer": "$12$", "domain": ["Math"], "difficulty": 5.0, "source": "x"}]}
    (tmp_path / "o.json").write_text(json.dumps(rows))
    assert load_dataset_file("omnimath", tmp_path / "o.json")[0].reference == "12"


def test_wrong_format_is_a_clear_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "no fields"}) + "\n")
    with pytest.raises(ValueError, match="published format"):
        load_dataset_file("gsm8k", tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset_file("aime", tmp_path / "bad.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="jsonl"):
        load_dataset_file("gsm8k", tmp_path / "x.csv")
