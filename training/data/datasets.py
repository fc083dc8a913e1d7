"""Loaders for GSM8K, MATH500 and OmniMath in their published formats, and answer normalisation.

Each loader reads a local ``.jsonl``, ``.json`` (a list, or ``{"data": [...]}``) or ``.parquet``
file with the dataset's own field names and returns ``Item``s (id, question, reference answer)
for collection, evaluation and the benchmark. ``load_from_hub`` goes through ``datasets`` where a
hub is reachable. The testbed remains the default everywhere.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stepgraph.training.data.records import Item

from stepgraph.answers import extract_boxed
from stepgraph.errors import DataError

HUB_NAMES = {"gsm8k": ("openai/gsm8k", "main"), "math500": ("HuggingFaceH4/MATH-500", None), "omnimath": ("KbsdJames/Omni-MATH", None)}


def normalize_answer(answer: str) -> str:
    """A reference answer as math-verify should read it: no ``$``, ``\\boxed{}``, thousands commas."""
    text = str(answer).strip()
    boxed = extract_boxed(text)
    if boxed is not None:
        text = boxed
    text = text.strip().strip("$").strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    return text


FORMATS = ".jsonl, .json (a list of objects, or {\"data\": [...]}) or .parquet"
SKIP_HINT = "fix or remove the row, or skip bad rows with --skip-bad-rows (run spec: data.skip_bad_rows = true)"


class _BadRow(Exception):
    """A row that cannot become an item: the message says what is wrong, ``kind`` counts it when skipped."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def _text(path: Path, data: bytes) -> str:
    # A BOM at the start (Windows editors write one) is harmless: utf-8-sig drops it.
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8.") from None


def _rows(path: str | Path) -> list[tuple[str, int, Any]]:
    """(where, index, value) per row of a data file; a malformed .jsonl line's value is a ``_BadRow``.

    ``where`` is "line N" (1-based) in a .jsonl, "row N" otherwise; ``index`` counts the rows from 0
    (default ids). A file that cannot be read at all raises ``DataError``.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        lines = _text(path, path.read_bytes()).split("\n")  # not splitlines: JSON strings may hold U+2028
        rows: list[tuple[str, int, Any]] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                value: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                # A BOM is accepted at the file's start only; inside, it is a sign of files joined together.
                problem = ("starts with a byte-order mark (U+FEFF; were files joined?): remove it" if line.startswith("\ufeff")
                           else f"not valid JSON: {exc.msg} at column {exc.colno}")
                value = _BadRow(problem, "malformed JSON")
            rows.append((f"line {number}", len(rows), value))
        return rows
    if path.suffix == ".json":
        try:
            data = json.loads(_text(path, path.read_bytes()))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file holds a list of objects or {{\"data\": [...]}}, not {_json_type(data)}.")
        return [(f"row {i + 1}", i, row) for i, row in enumerate(data)]
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError("Reading .parquet needs pyarrow: pip install pyarrow") from exc
        return [(f"row {i + 1}", i, row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    what = f"{path.suffix} files" if path.suffix else "files without an extension"
    raise DataError(f"{path}: cannot read {what}; data files are {FORMATS} (a CSV converts with "
                    "pandas.read_csv(path).to_json(out, orient='records', lines=True)).")


def _field(row: dict[str, Any], field: str, kind: str, hint: str = "") -> str:
    """The row's question or answer as text; a missing, null, empty or non-text value is a bad row."""
    value = row.get(field)
    if field not in row:
        problem = f"has no {field!r} field (fields: {sorted(row)}){hint}"
    elif value is None or isinstance(value, (bool, dict, list)):
        problem = f"has {field!r} = {_json_type(value)}, not text"
    elif not str(value).strip():
        problem = f"has an empty {field!r}"
    else:
        return str(value)
    raise _BadRow(problem, kind)


PUBLISHED = "; is this the published format?"


def _gsm8k(row: dict[str, Any]) -> tuple[str, str]:
    # GSM8K's answer is the worked solution ending in "#### <number>".
    question = _field(row, "question", "without a question", PUBLISHED)
    return question, _field(row, "answer", "without an answer", PUBLISHED).split("####")[-1]


def _math(row: dict[str, Any]) -> tuple[str, str]:
    question = _field(row, "problem", "without a question", PUBLISHED)
    # An empty or null answer falls back to the solution's \\boxed{} (some MATH rows have only that).
    if not row.get("answer") and isinstance(row.get("solution"), str) and (boxed := extract_boxed(row["solution"])):
        row = {**row, "answer": boxed}
    return question, _field(row, "answer", "without an answer", PUBLISHED)


PARSERS: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {"gsm8k": _gsm8k, "math500": _math, "omnimath": _math}


def _items(source: str | Path, rows: Iterable[tuple[str, int, Any]], parse: Callable[[dict[str, Any]], tuple[str, str]],
           default_id: str, skip_bad_rows: bool) -> list[Item]:
    """Items of the rows; a bad row raises ``DataError`` naming the file and line, or is counted and skipped."""
    items: list[Item] = []
    seen: dict[str, str] = {}  # id -> where it first appeared
    skipped = Counter[str]()
    for where, index, row in rows:
        try:
            if isinstance(row, _BadRow):
                raise row
            if not isinstance(row, dict):
                raise _BadRow(f"is {_json_type(row)}, not an object", "not an object")
            question, answer = parse(row)
            problem_id = str(row.get("unique_id", row.get("id", f"{default_id}:{index}")))
            if problem_id in seen:
                raise _BadRow(f"repeats id {problem_id!r} of {seen[problem_id]}", "with a duplicate id")
        except _BadRow as bad:
            if not skip_bad_rows:
                raise DataError(f"{source} {where}: {bad}; {SKIP_HINT}.") from None
            skipped[bad.kind] += 1
            continue
        seen[problem_id] = where
        items.append(Item(problem_id, question, normalize_answer(answer)))
    if skipped:
        counts = ", ".join(f"{n} {kind}" for kind, n in skipped.items())
        print(f"skipped {skipped.total()} bad row{'s' * (skipped.total() != 1)} of {source}: {counts}", file=sys.stderr)
    return items


def to_items(name: str, rows: Iterable[dict[str, Any]], source: str = "hub", skip_bad_rows: bool = False) -> list[Item]:
    """Items of a published data set's rows (``source`` names them in errors)."""
    return _items(f"{source} {name}", ((f"row {i + 1}", i, row) for i, row in enumerate(rows)), PARSERS[name], name,
                  skip_bad_rows)


def load_dataset_file(name: str, path: str | Path, skip_bad_rows: bool = False) -> list[Item]:
    """Load one of ``gsm8k``, ``math500``, ``omnimath`` from a local file.

    Raises:
        DataError: the file is not UTF-8, not one of the formats read, or a row is malformed, has
            no question or answer, or repeats an id (unless ``skip_bad_rows``: then skipped and
            counted on stderr).

    Example:
        >>> items = load_dataset_file("gsm8k", "gsm8k_test.jsonl")  # doctest: +SKIP
    """
    if name not in PARSERS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(PARSERS)}.")
    return _items(path, _rows(path), PARSERS[name], name, skip_bad_rows)


def load_from_hub(name: str, split: str = "test") -> list[Item]:
    """Load through ``datasets`` from the Hugging Face hub (needs network and ``pip install datasets``)."""
    from datasets import load_dataset

    repo, config = HUB_NAMES[name]
    return to_items(name, load_dataset(repo, config, split=split), source=repo)


def load_jsonl(path: str | Path, question_field: str = "question", answer_field: str = "answer",
               skip_bad_rows: bool = False) -> list[Item]:
    """A generic data file (.jsonl / .json / .parquet) with named question and answer fields.

    The answer is normalised (``\\boxed{}``, ``$``, thousands commas); an answer in GSM8K's
    ``... #### N`` form keeps only ``N``. Ids are the row's ``id`` field, else ``jsonl:ROW``. Bad
    rows raise ``DataError`` as in ``load_dataset_file``.
    """
    hint = "; set data.question_field / data.answer_field in the run spec"

    def parse(row: dict[str, Any]) -> tuple[str, str]:
        question = _field(row, question_field, "without a question", hint)
        return question, _field(row, answer_field, "without an answer", hint).split("####")[-1]

    return _items(path, _rows(path), parse, "jsonl", skip_bad_rows)
