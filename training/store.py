"""A durable trace store: SQLite in WAL mode, one row per finished episode.

Schema (version 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)           -- schema_version, feature_schema, models, ...
    episodes(
        problem_id    TEXT PRIMARY KEY,              -- resumable collection skips ids present
        split         TEXT NOT NULL,
        behaviour     TEXT NOT NULL,                 -- name of the behaviour gate
        seed          INTEGER NOT NULL,
        reward        INTEGER NOT NULL,              -- R: the routed answer is right
        target_reward INTEGER NOT NULL,              -- R_M: the strongest tier alone is right
        cost          REAL NOT NULL,                 -- FLOPs of the routed answer
        target_flops  REAL NOT NULL,
        n_steps       INTEGER NOT NULL,
        data          TEXT NOT NULL,                 -- the whole Episode as JSON
        created       REAL NOT NULL)

Each episode is written in its own transaction, so a collection that is killed keeps every
episode it finished; WAL mode lets readers (training, evaluation) open the store meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from stepgraph.training.records import Episode

from stepgraph.errors import TraceStoreError

SCHEMA_VERSION = 1
_CREATE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS episodes (
    problem_id TEXT PRIMARY KEY, split TEXT NOT NULL, behaviour TEXT NOT NULL, seed INTEGER NOT NULL,
    reward INTEGER NOT NULL, target_reward INTEGER NOT NULL, cost REAL NOT NULL, target_flops REAL NOT NULL,
    n_steps INTEGER NOT NULL, data TEXT NOT NULL, created REAL NOT NULL);
"""


class TraceStore:
    """Open (or create) a trace store.

    Args:
        path: the SQLite file.
        create: create the file if it does not exist (otherwise a missing file is an error).

    Raises:
        TraceStoreError: the file is not a SQLite database, is corrupted or truncated, or was
            written by another schema version.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise TraceStoreError(f"No trace store at {self.path}; run `stepgraph collect --store {self.path}` first.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise TraceStoreError(f"{self.path} failed SQLite's integrity check ({check}); restore it or collect again.")
            with self._db:
                self._db.executescript(_CREATE)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            raise TraceStoreError(f"{self.path} is not a readable trace store ({exc}); it may be corrupted or truncated.") from exc
        version = self.meta("schema_version")
        if version != SCHEMA_VERSION:
            raise TraceStoreError(f"{self.path} has trace schema version {version}; this stepgraph reads version {SCHEMA_VERSION}.")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def problem_ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT problem_id FROM episodes")}

    def add(self, episode: Episode, split: str) -> None:
        """Write one finished episode (atomically; an id already present is replaced)."""
        row = (
            episode.problem_id, split, episode.behaviour, episode.seed, episode.reward, episode.target_reward,
            episode.cost, episode.target_flops, len(episode.steps), json.dumps(episode.to_dict()), time.time(),
        )
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]

    def episodes(self, split: str | None = None) -> Iterator[Episode]:
        """Episodes in insertion order, optionally of one split.

        Raises:
            TraceStoreError: a row whose JSON is unreadable or not an Episode.
        """
        query = "SELECT problem_id, data FROM episodes" + (" WHERE split = ?" if split else "") + " ORDER BY rowid"
        try:
            rows = self._db.execute(query, (split,) if split else ()).fetchall()
        except sqlite3.DatabaseError as exc:
            raise TraceStoreError(f"Could not read episodes from {self.path}: {exc}") from exc
        for problem_id, data in rows:
            try:
                yield Episode.from_dict(json.loads(data))
            except (json.JSONDecodeError, TypeError, KeyError) as exc:
                raise TraceStoreError(f"Episode {problem_id!r} in {self.path} is corrupted: {exc}") from exc
