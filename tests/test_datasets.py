"""Dataset loaders on small files in the published formats."""

import json

import pytest
from stepgraph.training.data.datasets import load_dataset_file, load_jsonl, normalize_answer

from stepgraph.errors import DataError


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


def _jsonl(tmp_path, *lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_null_answer_is_refused_naming_the_file_and_line(tmp_path):
    path = _jsonl(tmp_path, '{"question": "1+1?", "answer": "2"}', "", '{"question": "2+2?", "answer": null}')
    with pytest.raises(DataError, match=r"d\.jsonl line 3: has 'answer' = null.*--skip-bad-rows"):
        load_jsonl(path)
    with pytest.raises(DataError, match="line 3: has 'answer' = null"):  # the published loaders too
        load_dataset_file("gsm8k", path)
    with pytest.raises(DataError, match="line 1: has an empty 'answer'"):
        load_jsonl(_jsonl(tmp_path, '{"question": "1+1?", "answer": " "}'))


def test_math_without_answer_or_boxed_solution_is_refused(tmp_path):
    path = _jsonl(tmp_path, json.dumps({"problem": "x?", "solution": "no box", "answer": None}))
    with pytest.raises(DataError, match="line 1: has 'answer' = null"):
        load_dataset_file("math500", path)


def test_repeated_ids_are_refused_not_dropped(tmp_path):
    rows = [json.dumps({"id": "a", "question": f"{n}+1?", "answer": str(n + 1)}) for n in range(6)]
    with pytest.raises(DataError, match=r"line 2: repeats id 'a' of line 1"):
        load_jsonl(_jsonl(tmp_path, *rows))


def test_skip_bad_rows_skips_and_counts_them_on_stderr(tmp_path, capsys):
    path = _jsonl(tmp_path, '{"id": "a", "question": "1+1?", "answer": "2"}', '{"id": "b", "question": "2+2?", "answer": null}',
                  '{"id": "c", "question": "3+3?"}', '{"id": "a", "question": "4+4?", "answer": "8"}', "[1, 2]", "{oops")
    items = load_jsonl(path, skip_bad_rows=True)
    assert [(i.problem_id, i.reference) for i in items] == [("a", "2")]
    assert capsys.readouterr().err.strip() == (f"skipped 5 bad rows of {path}: 2 without an answer, 1 with a duplicate id, "
                                               "1 not an object, 1 malformed JSON")


@pytest.mark.parametrize(("line", "problem"), [("{oops", r"line 2: not valid JSON: Expecting property name"),
                                               ("[1, 2]", "line 2: is a list, not an object"),
                                               ("7", "line 2: is a number, not an object"),
                                               ('{"question": "2+2?"}', "line 2: has no 'answer' field"),
                                               ('\ufeff{"question": "2+2?", "answer": "4"}', "line 2: starts with a byte-order mark")])
def test_a_bad_line_is_one_error_naming_the_line(tmp_path, line, problem):
    path = _jsonl(tmp_path, '{"question": "1+1?", "answer": "2"}', line)
    with pytest.raises(DataError, match=problem) as err:
        load_jsonl(path)
    assert str(err.value).startswith(f"{path} ") and "\n" not in str(err.value)


def test_a_bom_at_the_start_is_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "1+1?", "answer": "2"}\r\n')
    assert [(i.question, i.reference) for i in load_jsonl(path)] == [("1+1?", "2")]
    (tmp_path / "d.json").write_bytes(b'\xef\xbb\xbf[{"question": "1+1?", "answer": "2"}]')
    assert load_jsonl(tmp_path / "d.json")[0].reference == "2"


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "x.csv").write_text("question,answer\n1+1?,2\n")
    with pytest.raises(DataError, match=r"x\.csv: cannot read \.csv files; data files are \.jsonl, \.json .* or \.parquet"):
        load_jsonl(tmp_path / "x.csv")
    (tmp_path / "b.jsonl").write_bytes(b'{"question": "1+1?", "answer": "2"}\n{"question": "\xff"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl line 2: not UTF-8"):
        load_jsonl(tmp_path / "b.jsonl")
    (tmp_path / "n.json").write_text("7")
    with pytest.raises(DataError, match=r"n\.json: .* not a number"):
        load_jsonl(tmp_path / "n.json")
    (tmp_path / "m.json").write_text("[{")
    with pytest.raises(DataError, match=r"m\.json: not valid JSON"):
        load_jsonl(tmp_path / "m.json")
