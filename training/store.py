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
    claims(problem_id TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed REAL NOT NULL)

Each episode is written in its own transaction, so a collection that is killed keeps every
episode it finished; WAL mode lets readers (training, evaluation) open the store meanwhile.
Collectors sharing a store ``claim`` a problem before running it, so none is run twice; a
claim lapses when its owner process is gone or after ``CLAIM_SECONDS``.

Opening checks the file before touching it: a SQLite file with tables that are not a trace
store's is refused unmodified, as are missing columns, another schema version and another
feature schema. ``readonly=True`` opens without writing anything (a store on a read-only disk).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from stepgraph.training.records import Episode

from stepgraph.errors import TraceStoreError
from stepgraph.features import SCHEMAS, FeatureSchema

SCHEMA_VERSION = 1
CLAIM_SECONDS = 3600.0
"""A claim older than this is retaken even if its owner looks alive (a hung or remote collector)."""

_TABLES = {
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "episodes": """CREATE TABLE IF NOT EXISTS episodes (
        problem_id TEXT PRIMARY KEY, split TEXT NOT NULL, behaviour TEXT NOT NULL, seed INTEGER NOT NULL,
        reward INTEGER NOT NULL, target_reward INTEGER NOT NULL, cost REAL NOT NULL, target_flops REAL NOT NULL,
        n_steps INTEGER NOT NULL, data TEXT NOT NULL, created REAL NOT NULL)""",
    "claims": "CREATE TABLE IF NOT EXISTS claims (problem_id TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed REAL NOT NULL)",
}
_EPISODE_COLUMNS = ("problem_id", "split", "behaviour", "seed", "reward", "target_reward", "cost", "target_flops",
                    "n_steps", "data", "created")


class TraceStore:
    """Open (or create) a trace store.

    Args:
        path: the SQLite file.
        create: create the file if it does not exist (otherwise a missing file is an error).
        readonly: open for reading only; nothing is written, so a read-only file can be read.
        feature_schema: the feature schema the caller needs; a store of another one is refused.
            None (default) accepts any schema this stepgraph knows (``stepgraph.features.SCHEMAS``).

    Raises:
        TraceStoreError: the file is missing (``create=False``), not a SQLite database, corrupted
            or truncated, another program's database, or of another schema version or feature schema.
    """

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False,
                 feature_schema: FeatureSchema | None = None) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if (readonly or not create) and not self.path.is_file():
            raise TraceStoreError(f"No trace store at {self.path}; run `stepgraph collect --store {self.path}` first.")
        try:
            if readonly:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                           check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise TraceStoreError(f"{self.path} failed SQLite's integrity check ({check}); restore it or collect again.")
            self._check_tables()
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                with self._db:
                    for create_table in _TABLES.values():
                        self._db.execute(create_table)
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._check_meta(feature_schema)
        except sqlite3.DatabaseError as exc:
            raise TraceStoreError(f"{self.path} is not a readable trace store ({exc}); it may be corrupted or truncated.") from exc

    def _check_tables(self) -> None:
        """Refuse another program's database, and a store missing columns, before anything is written."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if foreign := sorted(tables - set(_TABLES) - {"sqlite_sequence"}):
            raise TraceStoreError(f"{self.path} is another program's SQLite database (it has tables {foreign}), not a "
                                  "stepgraph trace store; it was left unchanged. Pass a new --store path.")
        if "episodes" in tables:
            columns = {row[1]: row for row in self._db.execute("PRAGMA table_info(episodes)")}
            if missing := [c for c in _EPISODE_COLUMNS if c not in columns]:
                raise TraceStoreError(f"{self.path}: the episodes table lacks columns {missing}; it was not written by "
                                      "this stepgraph. Pass a new --store path.")
            # Rows are inserted by column name, so only an extra column that needs a value gets in the way.
            required = [name for name, (_, _, _, notnull, default, _) in columns.items()
                        if name not in _EPISODE_COLUMNS and notnull and default is None]
            if required:
                raise TraceStoreError(f"{self.path}: the episodes table has extra required columns {required} that "
                                      "stepgraph does not fill. Pass a new --store path.")
        elif self.readonly:
            raise TraceStoreError(f"{self.path} holds no episodes table; run `stepgraph collect --store {self.path}` first.")

    def _check_meta(self, feature_schema: FeatureSchema | None) -> None:
        version = self.meta("schema_version")
        try:
            readable = int(version) == SCHEMA_VERSION  # stored as text by older writers
        except (TypeError, ValueError):
            readable = False
        if not readable:
            raise TraceStoreError(f"{self.path} has trace schema version {version!r}; this stepgraph reads version "
                                  f"{SCHEMA_VERSION}. Collect a new store with this version.")
        stored = self.meta("feature_schema")
        allowed = [feature_schema.to_dict()] if feature_schema is not None else [s.to_dict() for s in SCHEMAS.values()]
        if stored is not None and stored not in allowed:
            raise TraceStoreError(f"{self.path} holds traces of feature schema {stored}, but this stepgraph computes "
                                  f"{' or '.join(map(str, allowed))}. Collect a new store with this version.")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except (json.JSONDecodeError, TypeError):
            return row[0]

    def set_meta(self, key: str, value: Any) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def problem_ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT problem_id FROM episodes")}

    def claim(self, problem_id: str) -> bool:
        """Reserve a problem for this collector; False if it is stored or another live collector holds it."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")  # one claimer at a time across processes
            if self._db.execute("SELECT 1 FROM episodes WHERE problem_id = ?", (problem_id,)).fetchone():
                return False
            row = self._db.execute("SELECT owner, claimed FROM claims WHERE problem_id = ?", (problem_id,)).fetchone()
            if row is not None and row[0] != self.owner and _alive(row[0]) and now - row[1] < CLAIM_SECONDS:
                return False
            self._db.execute("INSERT OR REPLACE INTO claims (problem_id, owner, claimed) VALUES (?, ?, ?)",
                             (problem_id, self.owner, now))
            return True

    def add(self, episode: Episode, split: str) -> None:
        """Write one finished episode and drop its claim (atomically; an id already present is replaced)."""
        row = {
            "problem_id": episode.problem_id, "split": split, "behaviour": episode.behaviour, "seed": episode.seed,
            "reward": episode.reward, "target_reward": episode.target_reward, "cost": episode.cost,
            "target_flops": episode.target_flops, "n_steps": len(episode.steps), "data": json.dumps(episode.to_dict()),
            "created": time.time(),
        }
        names = ", ".join(row)
        with self._db:
            self._db.execute(f"INSERT OR REPLACE INTO episodes ({names}) VALUES ({', '.join(':' + n for n in row)})", row)
            self._db.execute("DELETE FROM claims WHERE problem_id = ?", (episode.problem_id,))

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


def _alive(owner: str) -> bool:
    """Whether a claim's owner may still be running: a process on this host that exists, or any other host."""
    host, pid, _ = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return True  # cannot tell; the claim lapses after CLAIM_SECONDS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True
