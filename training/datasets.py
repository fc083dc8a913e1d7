"""Loaders for GSM8K, MATH500 and OmniMath in their published formats, and answer normalisation.

Each loader reads a local ``.jsonl``, ``.json`` (a list, or ``{"data": [...]}``) or ``.parquet``
file with the dataset's own field names and returns ``Item``s (id, question, reference answer)
for collection, evaluation and the benchmark. ``load_from_hub`` goes through ``datasets`` where a
hub is reachable. The testbed remains the default everywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stepgraph.training.records import Item

from stepgraph.answers import extract_boxed

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


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json or .parquet file as dicts."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data["data"] if isinstance(data, dict) else data
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError("Reading .parquet needs pyarrow: pip install pyarrow") from exc
        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: expected a .jsonl, .json or .parquet file.")


def _gsm8k(row: dict[str, Any]) -> tuple[str, str]:
    # GSM8K's answer is the worked solution ending in "#### <number>".
    return row["question"], normalize_answer(row["answer"].split("####")[-1])


def _math(row: dict[str, Any]) -> tuple[str, str]:
    answer = row.get("answer") or extract_boxed(row.get("solution", "")) or ""
    return row["problem"], normalize_answer(answer)


PARSERS: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {"gsm8k": _gsm8k, "math500": _math, "omnimath": _math}


def to_items(name: str, rows: Iterable[dict[str, Any]]) -> list[Item]:
    parse = PARSERS[name]
    items = []
    for i, row in enumerate(rows):
        try:
            question, reference = parse(row)
        except (KeyError, AttributeError) as exc:
            raise ValueError(f"{name} row {i} lacks the dataset's fields ({exc}); is this the published format?") from exc
        items.append(Item(str(row.get("unique_id", row.get("id", f"{name}:{i}"))), question, reference))
    return items


def load_dataset_file(name: str, path: str | Path) -> list[Item]:
    """Load one of ``gsm8k``, ``math500``, ``omnimath`` from a local file.

    Example:
        >>> items = load_dataset_file("gsm8k", "gsm8k_test.jsonl")  # doctest: +SKIP
    """
    if name not in PARSERS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(PARSERS)}.")
    return to_items(name, read_records(path))


def load_from_hub(name: str, split: str = "test") -> list[Item]:
    """Load through ``datasets`` from the Hugging Face hub (needs network and ``pip install datasets``)."""
    from datasets import load_dataset

    repo, config = HUB_NAMES[name]
    return to_items(name, load_dataset(repo, config, split=split))


def load_jsonl(path: str | Path, question_field: str = "question", answer_field: str = "answer") -> list[Item]:
    """A generic data file (.jsonl / .json / .parquet) with named question and answer fields.

    The answer is normalised (``\\boxed{}``, ``$``, thousands commas); an answer in GSM8K's
    ``... #### N`` form keeps only ``N``. Ids are the row's ``id`` field, else ``jsonl:ROW``.
    """
    items = []
    for i, row in enumerate(read_records(path)):
        if question_field not in row or answer_field not in row:
            missing = [f for f in (question_field, answer_field) if f not in row]
            raise ValueError(f"{path} row {i} has no field {missing[0]!r} (fields: {sorted(row)}); set data.question_field / "
                             "data.answer_field in the run spec.")
        answer = str(row[answer_field])
        items.append(Item(str(row.get("id", f"jsonl:{i}")), str(row[question_field]), normalize_answer(answer.split("####")[-1])))
    return items
